"""The options of each ``tki-bench`` suite, one module per suite (``add_arguments(parser)``).

A suite (:mod:`tki_sdk.benchmarks`) reads its options as attributes of the ``args`` its ``run`` receives
(:class:`tki_sdk.benchmarks.options.SuiteOptions`); the flags that set them, their defaults as ``--help``
shows them and their parsers live here, so argparse stays in :mod:`tki_sdk.cli`.
"""
