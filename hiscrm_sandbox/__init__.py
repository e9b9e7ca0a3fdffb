"""The sandbox platform site: a small local web site standing in for a social platform
(QR login that expires and refreshes, a profile, comments and direct messages), so the
whole login-and-crawl flow runs offline in a real browser."""
