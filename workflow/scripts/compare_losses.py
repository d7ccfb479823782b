"""Compare the loss curves and throughput of two runs' metrics.csv (e.g. one GPU and DDP on two, same global
batch): per logged step the loss difference, and the median tokens/s of each (the first row, with start-up and
compilation, left out). Usage: python compare_losses.py A/metrics.csv B/metrics.csv"""

import sys

import pandas as pd


def main(a: str, b: str) -> None:
    x, y = pd.read_csv(a), pd.read_csv(b)
    both = x.merge(y, on="step", suffixes=("_a", "_b"))
    diff = (both["loss_b"] - both["loss_a"]).abs()
    print(f"A: {a}\nB: {b}\nsteps compared: {len(both)} (of {len(x)} and {len(y)})")
    print(f"|loss_B - loss_A|: max {diff.max():.4f}, mean {diff.mean():.4f}, last {diff.iloc[-1]:.4f}; "
          f"final loss A {both['loss_a'].iloc[-1]:.4f}, B {both['loss_b'].iloc[-1]:.4f}")
    tok_a, tok_b = x["tokens_per_s"].iloc[1:].median(), y["tokens_per_s"].iloc[1:].median()
    print(f"median tokens/s: A {tok_a:,.0f}, B {tok_b:,.0f}, B/A {tok_b / tok_a:.2f}")
    print(both[["step", "loss_a", "loss_b"]].to_string(index=False))


if __name__ == "__main__":
    main(*sys.argv[1:3])
