"""hiscrm_master: the stateless Master loops over Redis, and the update API the CLI uses."""
