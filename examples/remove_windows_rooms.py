"""Example: the paper's "forgetting to draw windows" (section 6.3.1) on synthetic rooms, on a CPU.

Trains a small 32x32 DCGAN on rooms of which half have a bright window, samples 150 z, boxes
the windows automatically by their colour (what a person would draw by hand), runs
`analysis remove-windows`, and measures on fresh samples how often a window appears with and
without the dropped feature maps, and how much the rest of the room changes.

    python examples/remove_windows_rooms.py --out runs/rooms-windows [--steps 300] [--width 64]

Look at OUT/remove-windows/comparison.png (top row: samples, bottom row: the same z with the
window maps dropped). The same files can be made by hand with the CLI:

    gan train OUT/rooms --out OUT/run --image-size 32 --arch compact --width 64 ...
    analysis remove-windows --ckpt OUT/run/checkpoints/last.pt --boxes OUT/boxes.json --out DIR
"""

from __future__ import annotations

from pathlib import Path

import click

from analysis.rooms import window_removal_experiment


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Work folder (rooms shards, the training run, boxes.json, results).")
@click.option("--steps", default=300, show_default=True, help="Training steps (batch 64).")
@click.option("--width", default=64, show_default=True, help="G/D width (channels at 4x4).")
@click.option("--bn", type=click.Choice(["batch", "running"]), default="batch",
              show_default=True, help="BatchNorm statistics while sampling.")
@click.option("--seed", default=0, show_default=True)
def main(out: Path, steps: int, width: int, bn: str, seed: int) -> None:
    r = window_removal_experiment(out, width=width, steps=steps, bn=bn, seed=seed)
    click.echo(f"dropped {r['dropped']} of {r['channels']} maps at {r['layer']} (held-out "
               f"accuracy {r['heldout_accuracy']:.3f}, AUC {r['heldout_auc']:.3f})")
    click.echo(f"windows in fresh samples: {r['window_frequency_before']:.1%} -> "
               f"{r['window_frequency_after']:.1%}")
    click.echo(f"lower half of the room (floor, furniture): mean colour change "
               f"{r['lower_half_change']:.1f} vs {r['lower_half_between_samples']:.1f} between "
               f"two different samples (0-255 scale)")
    click.echo(f"comparison: {out / 'remove-windows' / 'comparison.png'}")


if __name__ == "__main__":
    main()
