"""``python -m deepfeat``: the same as the ``deepfeat`` program."""

from ._console import main

raise SystemExit(main())
