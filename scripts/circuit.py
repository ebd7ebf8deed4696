"""Edge-level circuit reports: the same code as `interp circuit` (see `interp circuit --help`).

    python scripts/circuit.py --model interp-toy --n-pairs 32 --out reports/
    python scripts/circuit.py --model interp-toy-llama --task pairs.jsonl --method eap-ig,exact --steps 10 --resume
"""

import sys

from interp.cli import main

if __name__ == "__main__":
    sys.exit(main(["circuit", *sys.argv[1:]]))
