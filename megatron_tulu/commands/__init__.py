"""The ``megatron-tulu`` commands: one module per command, each its argument parsing, its printing
and its ``main(argv) -> int``.

Commands sit on top of every layer (docs/layers.md): they may import anything in megatron_tulu, and
nothing imports them but :mod:`megatron_tulu.cli`, which loads the one a command line names.
"""
