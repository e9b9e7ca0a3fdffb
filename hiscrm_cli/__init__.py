"""The ``hiscrm`` command: the composition root that parses options, builds settings
and calls one library function per command."""
