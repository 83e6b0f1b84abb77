"""The ``fcnseg`` subcommands: one module each, with ``add_parser(subparsers)`` and ``run(args)``.

Commands are thin: they read flags, call the library (:mod:`fcnseg.api`, :mod:`fcnseg.train`,
:mod:`fcnseg.evaluate`, :mod:`fcnseg.export`, :mod:`fcnseg.serve`) and print or write the results.
"""

# In the order ``fcnseg --help`` lists them.
COMMANDS = ("train", "evaluate", "predict", "export", "serve", "demo", "download", "convert")
