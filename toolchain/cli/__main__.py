"""``python -m cbnet_tl.toolchain.cli``: the same as the ``cbnet-tl`` command."""

from cbnet_tl.toolchain.cli import main

main()
