"""`make bench`: the update's throughput and evaluation speed (see `isep.bench.throughput`).

    python benchmarks/throughput.py --out bench-results          # = isep bench --out bench-results
"""

import sys

from isep.bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
