"""``python -m pgshield.cli``."""

from pgshield.cli import main

main()
