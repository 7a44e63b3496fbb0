"""``python -m dnmf``: the command line."""

from dnmf.cli import main

if __name__ == "__main__":
    main()
