"""``hiscrm web``: the operators' console (Starlette, Jinja2, htmx, server-sent events).
It uses the library the CLI uses: one write path, one diagnose."""
