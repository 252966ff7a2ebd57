"""`gan`: train the paper's DCGAN on shards and draw from it (grids, walks, vector arithmetic).

Parse, call the Python function with the same defaults, print one summary line. User errors
(missing shards, a wrong image size, a bad checkpoint, divergence) end with a one-line message
and exit code 1, never a traceback. Torch is imported by the commands, not here, so `--help`
is quick and a Ctrl-C while it loads is handled like any other (core.signals).
"""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from core.cli import (
    SEED,
    FiniteFloatRange,
    device_option,
    out_dir_option,
    progress_option,
    restart_options,
    run,
    user_errors,
)
from gan.cli_options import bn_option, ckpt_option
from gan.config import (
    ARCHS,
    CACHES,
    IMAGE_SIZES,
    MAX_IMAGES,
    MIN_WIDTH,
    PRECISION_HELP,
    PRECISIONS,
    PRIORS,
    TrainConfig,
)
from gan.quality.options import extractor_options, metric_list


def png_out_option(default: str):
    """--out as the one PNG file a drawing command writes (not a folder, unlike `gan train`)."""
    return click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
                        default=default, show_default=True, help="PNG file to write.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """DCGAN (Radford et al. 2015): train on WebDataset shards, then sample, walk and do
    vector arithmetic in the latent space."""


DEFAULTS = TrainConfig.__dataclass_fields__  # --help shows the Python API's defaults


@main.command(short_help="Train the paper's DCGAN on shards (CPU, GPU, torchrun).")
@click.option("--data", required=True, help="Training shards: a `pipeline shards` output folder, "
              "a .tar, a glob or a {000000..000009} brace pattern.")
@out_dir_option
@click.option("--image-size", type=click.Choice([str(s) for s in IMAGE_SIZES]), default="64",
              show_default=True, help="Side of the training images (the shards must match).")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True,
              help="Images per step per process (the paper's 128; BatchNorm sees this batch).")
@click.option("--epochs", type=click.IntRange(min=1),
              help="Passes over the shards (default: 1 when --steps is not given).")
@click.option("--steps", type=click.IntRange(min=1),
              help="Total optimizer steps (with --resume: the total, counting the steps done).")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True),
              default=DEFAULTS["lr"].default, show_default=True, help="Adam learning rate (paper).")
@click.option("--beta1", type=FiniteFloatRange(0, 1, max_open=True),
              default=DEFAULTS["beta1"].default, show_default=True,
              help="Adam beta1 (paper; beta2 0.999).")
@click.option("--nz", type=click.IntRange(min=1), default=100, show_default=True,
              help="Dimension of z.")
@click.option("--arch", type=click.Choice(ARCHS), default="paper", show_default=True,
              help="'paper': the authors' released code (z -> linear -> 4x4x1024 + BN, 5x5 "
                   "stride-2 kernels, D ends in a linear layer; 18.9M/17.2M params, ~15 GFLOP "
                   "per training image at 64x64). 'compact': the common PyTorch version (4x4 "
                   "kernels, 512 maps at 4x4; 3.6M/2.8M params, ~2.5 GFLOP).")
@click.option("--width", type=click.IntRange(min=MIN_WIDTH),
              help="Feature maps at 4x4 in G and D, halved at each doubling, so a multiple of "
                   "4, 8 or 16 for 32, 64 or 128 pixel images (default: 1024 for paper, 512 "
                   "for compact).")
@click.option("--prior", type=click.Choice(PRIORS), default="uniform", show_default=True,
              help="z prior: 'uniform' in [-1, 1] (paper) or 'normal' (reimplementations).")
@click.option("--workers", type=click.IntRange(min=0),
              default=DEFAULTS["workers"].default_factory(), show_default=True,
              help="Loader processes decoding shards (0: in the main process). Part of the "
                   "data order, so --resume keeps the stored value.")
@click.option("--cache", type=click.Choice(CACHES), default="none", show_default=True,
              help="'none': stream and decode every epoch. 'ram': decode once into a uint8 "
                   "memory-mapped file (RUN/cache/). 'gpu': decode once into a uint8 tensor on "
                   "the GPU (64x64: ~12 KB per image; under torchrun each GPU holds only its "
                   "rank's share; refused up front when it does not fit). Caches shuffle by "
                   "index per epoch.")
@device_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--sample-every", type=click.IntRange(min=1),
              default=DEFAULTS["sample_every"].default, show_default=True,
              help="Steps between sample grids (the same 64 z all run).")
@click.option("--ckpt-every", type=click.IntRange(min=1),
              default=DEFAULTS["ckpt_every"].default, show_default=True,
              help="Steps between periodic checkpoints (last.pt too).")
@click.option("--log-every", type=click.IntRange(min=1),
              default=DEFAULTS["log_every"].default, show_default=True,
              help="Steps between copies of the statistics to the host "
                   "(every step still gets its own line in metrics.jsonl).")
@bn_option("Used for the periodic sample grids.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile G and D (slow start; worth it on GPUs for long runs). Under "
                   "torchrun the DDP-wrapped networks are compiled, so the gradient all-reduce "
                   "overlaps the backward.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto",
              show_default=True, help=PRECISION_HELP)
@click.option("--metrics-every", type=click.IntRange(min=1),
              help="Steps between FID, KID and precision/recall of G's samples (as `gan "
                   "metrics`, on rank 0) into metrics.jsonl and TensorBoard; the best FID's "
                   "checkpoint is kept as checkpoints/best.pt. Needs --metrics-real.")
@click.option("--metrics-real", help="Real images the scores compare with (shards or a folder).")
@click.option("--metrics-n", type=click.IntRange(min=4), default=DEFAULTS["metrics_n"].default,
              show_default=True, help="Samples (and real images) per score.")
@extractor_options("metrics-")
@restart_options
@progress_option
@click.pass_context
@user_errors
def train(ctx, data, out, image_size, batch_size, epochs, steps, lr, beta1, nz, arch, width, prior,
          workers, cache, device, seed, sample_every, ckpt_every, log_every, bn, compile_,
          precision, metrics_every, metrics_real, metrics_n, metrics_inception,
          metrics_features, resume, overwrite, progress):
    """Train the paper's DCGAN (Adam 2e-4/0.5, batch 128, N(0, 0.02) init) on shards.

    The run folder --out gets metrics.jsonl, samples/, checkpoints/, loss_curve.png,
    config.json and, when the run finishes, summary.json. --resume continues from
    checkpoints/last.pt exactly (model, data and optimizer settings come from the checkpoint),
    also to add steps to a finished run; --overwrite starts over in place.

    Multi-GPU or multi-node: `torchrun --nproc_per_node N $(which gan) train ...`; shards are
    split across processes, each process takes cuda:LOCAL_RANK and only rank 0 writes files.
    """
    from gan.train import train as run_training

    summary = run_training(
        data, out, image_size=int(image_size), batch_size=batch_size, epochs=epochs,
        steps=steps, lr=lr, beta1=beta1, nz=nz, arch=arch, width=width, prior=prior,
        workers=workers, cache=cache, device=str(device), seed=seed, sample_every=sample_every,
        ckpt_every=ckpt_every, log_every=log_every, bn=bn, compile=compile_,
        precision=precision, metrics_every=metrics_every, metrics_real=metrics_real,
        metrics_n=metrics_n, metrics_inception=_plain(metrics_inception),
        metrics_features=_plain(metrics_features), resume=resume, overwrite=overwrite,
        progress=progress, given=given_options(ctx))
    if summary.get("line"):
        click.echo(summary["line"])


def given_options(ctx: click.Context) -> list[str]:
    """The settings (TrainConfig's names) of the options given on the command line, a default
    value given explicitly among them: a resumed run names those its checkpoint keeps, which a
    comparison with the defaults would miss for a default given explicitly."""
    return [param.name.rstrip("_") for param in ctx.command.params
            if ctx.get_parameter_source(param.name) not in (None, ParameterSource.DEFAULT)]


def _plain(path: Path | None) -> str | None:
    """A path as the plain string a checkpoint's config may hold."""
    return None if path is None else str(path)


@main.command(short_help="A numbered grid of samples (and their z).")
@ckpt_option
@click.option("--n", type=click.IntRange(1, MAX_IMAGES), default=64, show_default=True,
              help="Samples to draw (one batch).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@png_out_option("samples.png")
@click.option("--save-z", type=click.Path(dir_okay=False, path_type=Path),
              help="Also save the z's as a .npy (row i = sample i) for `gan arithmetic`.")
@click.option("--nrow", type=click.IntRange(min=1), default=8, show_default=True)
@bn_option()
@device_option
@user_errors
def sample(ckpt, n, seed, out, save_z, nrow, bn, device):
    """A numbered grid of samples, so exemplars can be picked by number."""
    import torch

    from core.files import write_npy_atomic
    from gan.checkpoint import load_models
    from gan.sample import generate, sample_z, save_grid

    G, _, config = load_models(ckpt, device)
    z = sample_z(n, config["nz"], config["prior"], torch.Generator().manual_seed(seed))
    save_grid(generate(G, z, bn), out, nrow=nrow, numbered=True)
    if save_z:
        write_npy_atomic(save_z, z.numpy())
    click.echo(f"{n} samples -> {out}" + (f", z -> {save_z}" if save_z else ""))


@main.command(name="interpolate", short_help="Latent walks between random points (Fig 4).")
@ckpt_option
@click.option("--points", type=click.IntRange(2, MAX_IMAGES // 2 + 1), default=9,
              show_default=True, help="Random points in Z chained together (one row per "
              f"consecutive pair); (points - 1) x steps images, at most {MAX_IMAGES:,}.")
@click.option("--steps", type=click.IntRange(2, MAX_IMAGES), default=10, show_default=True,
              help="Images per row, both ends included.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--slerp", is_flag=True, help="Spherical instead of linear interpolation.")
@png_out_option("walk.png")
@bn_option()
@device_option
@user_errors
def interpolate_cmd(ckpt, points, steps, seed, slerp, out, bn, device):
    """Latent walks (paper Fig. 4): smooth transitions argue against memorization."""
    from gan.checkpoint import load_models
    from gan.sample import check_figure_size, interpolate, save_grid

    check_figure_size((points - 1) * steps, f"--points {points} --steps {steps}")
    G, _, config = load_models(ckpt, device)
    images = interpolate(G, config["prior"], points, steps, seed, slerp, bn)
    save_grid(images, out, nrow=steps)
    click.echo(f"{points - 1} walks of {steps} steps -> {out}")


def index_list(ctx, param, value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected sample numbers like 3,17,42") from None


@main.command(name="arithmetic", short_help="Vector arithmetic on z: A - B + C (Fig 7).")
@ckpt_option
@click.option("--z", "z_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="z's saved by `gan sample --save-z` (numbers refer to that grid).")
@click.option("--a", required=True, callback=index_list, help="Exemplars of A, e.g. 3,17,42.")
@click.option("--b", required=True, callback=index_list, help="Exemplars of B (subtracted).")
@click.option("--c", required=True, callback=index_list, help="Exemplars of C (added).")
@click.option("--noise", type=FiniteFloatRange(min=0), default=0.25, show_default=True,
              help="Uniform noise added to Y for the extra samples (paper: +-0.25).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@png_out_option("arithmetic.png")
@bn_option()
@device_option
@user_errors
def arithmetic_cmd(ckpt, z_path, a, b, c, noise, seed, out, bn, device):
    """Vector arithmetic (paper Fig. 7): Y = mean(z[A]) - mean(z[B]) + mean(z[C]).

    Rows: A's exemplars and G(mean z[A]); the same for B and C; G(Y) followed by 8 samples of
    Y + U(-noise, noise); last, the same arithmetic done on pixels, for contrast.
    """
    from core.files import write_png_atomic
    from gan.checkpoint import load_models
    from gan.sample import arithmetic, arithmetic_sheet, load_z

    G, _, config = load_models(ckpt, device)
    if not z_path.is_file():
        raise click.ClickException(f"{z_path}: no such file")
    z = load_z(z_path, config["nz"])
    result = arithmetic(G, z, a, b, c, noise=noise, seed=seed, bn=bn)
    write_png_atomic(out, arithmetic_sheet(result))
    click.echo(f"A - B + C from {len(a)}/{len(b)}/{len(c)} exemplars -> {out}")


@main.command(name="metrics", short_help="FID, KID and precision/recall of G's samples.")
@click.option("--ckpt", type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint from `gan train` whose G is scored (or give --fake).")
@click.option("--fake", help="Score these images instead of a checkpoint's samples: shards, "
              "a folder of images or any source `pipeline` reads.")
@click.option("--real", required=True, help="Real images: shards (a `pipeline shards` folder, "
              "a .tar, a glob) or a folder of images.")
@click.option("--n", type=click.IntRange(min=4), default=50000, show_default=True,
              help="Samples drawn from G, and real (and --fake) images used; a set holding "
                   "fewer is used whole (metrics.json says how many).")
@click.option("--metrics", "metrics", default="fid,kid,pr", show_default=True,
              callback=metric_list, help="Which scores: fid, kid, pr (precision/recall, k=3).")
@out_dir_option
@extractor_options()
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of G's z's (and of the KID subsets, and of which --fake images).")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Images per batch through G and the extractor.")
@click.option("--kid-subsets", type=click.IntRange(min=1), default=100, show_default=True,
              help="Random subsets KID is averaged over.")
@click.option("--kid-subset-size", type=click.IntRange(min=2), default=1000,
              show_default=True, help="Features per KID subset (fewer when N is smaller).")
@bn_option()
@device_option
@click.option("--overwrite", is_flag=True, help="Replace metrics.json in --out.")
@progress_option
@user_errors
def metrics_cmd(ckpt, fake, real, n, metrics, out, inception, features, seed, batch_size,
                kid_subsets, kid_subset_size, bn, device, overwrite, progress):
    """FID, KID and precision/recall (k=3) of a checkpoint's samples, or of the images of
    --fake, against --real, in the features of the FID Inception network (or of --features).

    Writes --out/metrics.json (every value, N, seed, the extractor and its SHA-256, software
    versions) and prints one line. The real images' features are cached per data set,
    extractor and N, so a second checkpoint only embeds its samples.
    """
    from gan.quality.evaluate import run_metrics

    report = run_metrics(real=real, out=out, ckpt=ckpt, fake=fake, n=n, metrics=metrics,
                         inception=inception, features=features, device=device, seed=seed,
                         batch_size=batch_size, bn=bn, kid_subsets=kid_subsets,
                         kid_subset_size=kid_subset_size, overwrite=overwrite,
                         progress=progress)
    click.echo(f"{report['line']} -> {out / 'metrics.json'}")


if __name__ == "__main__":
    run(main, "gan")
