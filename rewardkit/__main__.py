"""``python -m rewardkit ...`` is the same as the ``rewardkit`` command."""

from .cli import main

if __name__ == "__main__":
    main()
