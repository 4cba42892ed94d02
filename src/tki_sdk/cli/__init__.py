"""Every console entry point, and the only place argparse is used.

- :mod:`.main`: ``tki`` (``train``, ``demo`` and the runtime / service subcommands);
- :mod:`.runtime`: ``tki embed | index | search | info``;  :mod:`.serve`: ``tki serve``;
- :mod:`.export`: ``tki-export``;  :mod:`.bench`: ``tki-bench``;  :mod:`.demo`: ``tki demo``;
- :mod:`.base`: the one-line argparse parser and ``run_main`` (user errors -> one line + exit status).

Nothing in the library imports this package.
"""
