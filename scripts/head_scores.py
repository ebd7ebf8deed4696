"""Batch head-score reports: the same code as `interp heads` (see `interp heads --help`).

    python scripts/head_scores.py --model interp-toy --random-repeated 200 --out reports/
    python scripts/head_scores.py --model gpt2 --model gpt2-medium --prompts prompts.txt --shard 1/4 --resume
"""

import sys

from interp.cli import main

if __name__ == "__main__":
    sys.exit(main(["heads", *sys.argv[1:]]))
