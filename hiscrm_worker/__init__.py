"""hiscrm_worker: runs one monitor task per assigned account and hot-swaps its config."""
