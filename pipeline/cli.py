"""`pipeline`: turn raw images into clean WebDataset training shards.

Parse, call the stage's Python function, print one summary line. User errors (bad paths, a
finished output folder, bad options) end with a one-line message and exit code 1, never a
traceback.
"""

from __future__ import annotations

from pathlib import Path

import click

from core.cli import (
    SEED,
    FiniteFloatRange,
    device_option,
    overwrite_option,
    progress_option,
    restart_options,
    run,
    user_errors,
)
from pipeline.decode import DEFAULT_MAX_PIXELS
from pipeline.dedup import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DROPOUT,
    DEFAULT_EPOCHS,
    DEFAULT_MIN_STEPS,
    DEFAULT_NOISE,
    DEFAULT_RADIUS,
    DEFAULT_TRAIN_SAMPLES,
    MAX_RADIUS,
)
from pipeline.engines import ENGINE_HELP, ENGINES, RAY_ADDRESS_HELP
from pipeline.engines.local import default_workers
from pipeline.sources import DEFAULT_MAX_BYTES, SOURCES_HELP


def workers_option(fn):
    return click.option(
        "--workers", type=click.IntRange(min=1), default=default_workers(), show_default=True,
        help="Worker processes (default: all cores). Output is identical for any value.",
    )(fn)


def engine_options(fn):
    """--engine and --ray-address: where the per-chunk work runs (pipeline.engines)."""
    fn = click.option("--ray-address", metavar="ADDR", default=None, help=RAY_ADDRESS_HELP)(fn)
    return click.option("--engine", type=click.Choice(ENGINES), default="local",
                        show_default=True, help=ENGINE_HELP)(fn)


def shard_format_option(fn):
    return click.option("--format", "fmt", type=click.Choice(["png", "jpg"]), default="png",
                        show_default=True,
                        help="Image encoding inside the shards (png is lossless).")(fn)


def maxcount_option(fn):
    return click.option("--maxcount", type=click.IntRange(min=1), default=10_000,
                        show_default=True,
                        help="Samples per shard (one photo's samples never straddle two).")(fn)


def max_pixels_option(fn):
    return click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS,
                        show_default=True,
                        help="Refuse images whose header claims more pixels (bomb guard).")(fn)


def max_bytes_option(fn):
    return click.option("--max-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_BYTES,
                        show_default=True,
                        help="Record larger files as too_large, unread (only regular files are "
                             "read: a FIFO or a device is recorded as unreadable).")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Data pipeline for DCGAN training: faces, dedup, shards.

    Every stage reads any image source, writes WebDataset shards (or lists), and accounts for
    every input in OUT/manifest.jsonl and OUT/summary.json.
    """


@main.command()
@click.argument("lists", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for shards of the original bytes, manifest.jsonl, "
                   "summary.json, index.json.")
@click.option("--url-col", default="url", show_default=True,
              help="Column holding the URL in .csv/.tsv/.jsonl/.parquet lists; the other "
                   "columns go into each sample's .json.")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Requests in flight in all.")
@click.option("--per-host", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Requests in flight (and open connections) to one host at most.")
@click.option("--retries", type=click.IntRange(0, 10), default=3, show_default=True,
              help="Extra tries after a 429, a 5xx, a reset or a body cut short.")
@click.option("--retry-wait", type=FiniteFloatRange(0, 60), default=1.0, show_default=True,
              help="Seconds before the first retry, doubled each time, +-50% jitter (a "
                   "server's Retry-After, up to 120 s, wins).")
@click.option("--connect-timeout", type=FiniteFloatRange(0, 600, min_open=True), default=10.0,
              show_default=True, help="Seconds to open a connection.")
@click.option("--read-timeout", type=FiniteFloatRange(0, 600, min_open=True), default=20.0,
              show_default=True, help="Longest silence in seconds while waiting for data.")
@click.option("--timeout", "total_timeout", type=FiniteFloatRange(0, 3600, min_open=True),
              default=60.0, show_default=True, help="Seconds for one whole request.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=32 * 2**20, show_default=True,
              help="Stop reading a body past this many bytes (decompressed) and record the "
                   "row as too_large.")
@click.option("--max-redirects", type=click.IntRange(0, 50), default=10, show_default=True,
              help="Redirects followed per URL; more is recorded as redirect_loop.")
@click.option("--ignore-opt-out", is_flag=True,
              help="Fetch images whose X-Robots-Tag says noai/noimageai (otherwise recorded "
                   "as opted_out and not read); recorded in the summary.")
@maxcount_option
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="With --engine ray: download worker processes, each holding an equal share "
                   "of --per-host and --concurrency, so the whole cluster holds them; at most "
                   "--per-host, --concurrency and the cluster's CPUs (default: the least of "
                   "the three). The local engine fetches from one process. Output is "
                   "identical for any value.")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="Where the fetches run: 'local' (one event loop on this machine) or 'ray' "
                   "(--workers download workers on a Ray cluster, see --ray-address). Output "
                   "is identical for either.")
@click.option("--ray-address", metavar="ADDR", default=None, help=RAY_ADDRESS_HELP)
@restart_options
@progress_option
@user_errors
def download(lists, out, url_col, concurrency, per_host, retries, retry_wait, connect_timeout,
             read_timeout, total_timeout, max_bytes, max_redirects, ignore_opt_out, maxcount,
             workers, engine, ray_address, resume, overwrite, progress):
    """Download the images of URL lists (.txt: a URL a line; .csv, .tsv, .jsonl, .parquet
    with --url-col) into WebDataset shards of the original bytes in --out, every row
    accounted for in OUT/manifest.jsonl. `pipeline faces OUT` (or shards, dedup) reads it."""
    from pipeline.download import FetchSettings
    from pipeline.download import download as run_download

    settings = FetchSettings(concurrency=concurrency, per_host=per_host, retries=retries,
                             retry_wait=retry_wait, connect_timeout=connect_timeout,
                             read_timeout=read_timeout, total_timeout=total_timeout,
                             max_bytes=max_bytes, max_redirects=max_redirects,
                             ignore_opt_out=ignore_opt_out)
    summary = run_download(list(lists), out, url_col=url_col, settings=settings,
                           engine=engine, workers=workers, ray_address=ray_address,
                           maxcount=maxcount, resume=resume, overwrite=overwrite,
                           progress=progress)
    click.echo(summary["line"])


@main.command(epilog=SOURCES_HELP)
@click.argument("src", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for shards, manifest.jsonl, summary.json, index.json.")
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True,
              help="Side of the square training images (64 for LSUN/faces, 32 for ImageNet).")
@shard_format_option
@maxcount_option
@click.option("--exclude", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File of keys to leave out, one per line (e.g. dedup's duplicates.txt).")
@max_pixels_option
@max_bytes_option
@click.option("--label-from", type=click.Choice(["folder", "parent"]), default=None,
              help="Label every sample with its class: 'folder', the first folder under SRC "
                   "(SRC/<class>/.../<image>, as torchvision's ImageFolder); 'parent', the "
                   "folder the image sits in. Writes a .cls member (the class index) and "
                   "\"label\" in each .json, and OUT/labels.json, the sorted class names.")
@workers_option
@engine_options
@restart_options
@progress_option
@user_errors
def shards(src, out, size, fmt, maxcount, exclude, max_pixels, max_bytes, label_from, workers,
           engine, ray_address, resume, overwrite, progress):
    """Center-crop every image in SRC to a square, resize it (area interpolation) to --size,
    and write WebDataset training shards to --out."""
    from pipeline.shards import make_shards

    summary = make_shards(list(src), out, size=size, fmt=fmt, maxcount=maxcount,
                          exclude=exclude, workers=workers, engine=engine,
                          ray_address=ray_address, max_pixels=max_pixels,
                          max_bytes=max_bytes, label_from=label_from, resume=resume,
                          overwrite=overwrite, progress=progress)
    click.echo(summary["line"])


@main.command(epilog=SOURCES_HELP)
@click.argument("src", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for face-crop shards, manifest.jsonl, summary.json, "
                   "index.json, contact_sheet.png.")
@click.option("--min-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Keep faces whose box is at least this many pixels in the original photo. "
                   "Faces down to --search-below of it are searched for too, so that photos "
                   "with only smaller faces are recorded as faces_too_small, not no_face.")
@click.option("--margin", type=FiniteFloatRange(min=0), default=0.25, show_default=True,
              help="Enlarge the square crop by this fraction of the box side on every side.")
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True,
              help="Side of the square face crops written to the shards.")
@click.option("--detector", type=click.Choice(["haar", "yunet"]), default="haar",
              show_default=True,
              help="OpenCV Haar cascade, or YuNet (FaceDetectorYN; needs --yunet-onnx).")
@click.option("--cascade", default="haarcascade_frontalface_alt2", show_default=True,
              help="A cascade bundled with OpenCV (by name) or a cascade XML file.")
@click.option("--yunet-onnx", type=click.Path(dir_okay=False, path_type=Path),
              help="YuNet ONNX file for --detector yunet (never downloaded).")
@click.option("--scale-factor", type=FiniteFloatRange(min=1, min_open=True), default=1.1,
              show_default=True, help="Haar: size step between detection scales.")
@click.option("--min-neighbors", type=click.IntRange(min=0), default=5, show_default=True,
              help="Haar: overlapping detections needed to accept a face (fewer = more "
                   "faces and more false boxes).")
@click.option("--max-side", type=click.IntRange(min=32), default=1024, show_default=True,
              help="Shrink larger photos to this longer side for detection (crops still use "
                   "full resolution); never so far that the smallest face searched for would "
                   "drop below the detector's window.")
@click.option("--search-below", type=FiniteFloatRange(min=0, min_open=True, max=1), default=0.75,
              show_default=True,
              help="Fraction of --min-size down to which faces are searched for, to report "
                   "faces_too_small; 1 skips that search (~1.5x faster detection).")
@shard_format_option
@maxcount_option
@max_pixels_option
@max_bytes_option
@click.option("--debug-boxes", is_flag=True,
              help="Also write OUT/debug_boxes.png: the first photos with detections, boxes "
                   "drawn (green kept, red too small, yellow crop).")
@workers_option
@engine_options
@restart_options
@progress_option
@user_errors
def faces(src, out, min_size, margin, size, detector, cascade, yunet_onnx, scale_factor,
          min_neighbors, max_side, search_below, fmt, maxcount, max_pixels, max_bytes,
          debug_boxes, workers, engine, ray_address, resume, overwrite, progress):
    """Detect faces in every photo in SRC (OpenCV) and write one square crop per face of at
    least --min-size pixels, resized to --size, to WebDataset training shards in --out."""
    from pipeline.faces import detect_faces

    summary = detect_faces(list(src), out, min_size=min_size, margin=margin, size=size,
                           detector=detector, cascade=cascade, yunet_onnx=yunet_onnx,
                           scale_factor=scale_factor, min_neighbors=min_neighbors,
                           max_side=max_side, search_below=search_below, fmt=fmt,
                           maxcount=maxcount, max_pixels=max_pixels, max_bytes=max_bytes,
                           debug_boxes=debug_boxes,
                           workers=workers, engine=engine, ray_address=ray_address,
                           resume=resume, overwrite=overwrite, progress=progress)
    click.echo(summary["line"])


@main.command(epilog=SOURCES_HELP)
@click.argument("src", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for groups.jsonl, duplicates.txt, autoencoder.pt, loss.png, "
                   "collisions.png, manifest.jsonl, summary.json.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Apply a saved autoencoder (OUT/autoencoder.pt of an earlier run) instead of "
                   "training one: the same hash for new data. The training options below are "
                   "then refused (the model keeps its own).")
@click.option("--train-samples", type=click.IntRange(min=2), default=DEFAULT_TRAIN_SAMPLES,
              show_default=True, help="Random crops the autoencoder is trained on.")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULT_EPOCHS, show_default=True,
              help="Passes over the training sample.")
@click.option("--min-steps", type=click.IntRange(min=0), default=DEFAULT_MIN_STEPS,
              show_default=True, help="Train at least this many mini-batches (more epochs on "
                                      "a small sample): an undertrained hash collides.")
@click.option("--noise", type=FiniteFloatRange(min=0), default=DEFAULT_NOISE, show_default=True,
              help="Strength of the de-noising corruption (re-encode/rescale/crop/brightness "
                   "as seen at 32x32; 0 = plain autoencoder).")
@click.option("--dropout", type=FiniteFloatRange(0, 1, max_open=True), default=DEFAULT_DROPOUT,
              show_default=True, help="Dropout on the 128 code units during training.")
@click.option("--radius", type=click.IntRange(0, MAX_RADIUS), default=DEFAULT_RADIUS,
              show_default=True,
              help="Hash codes within this many bits propose candidate pairs for "
                   "verification (the colour-palette codes that also propose keep their own "
                   "7 bits); with --no-verify, codes this close to a group's anchor code join "
                   "it. The paper's mode: --radius 0 --no-verify (equal codes only).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Confirm each candidate pair on whole-frame thumbnails, against a distance "
                   "threshold calibrated on the data (OUT/distances.png, OUT/rejected.png).")
@click.option("--mirrors", type=click.Choice(["different", "same"]), default="different",
              show_default=True,
              help="Whether a left-right mirror image is a copy: 'same' when training uses "
                   "flip augmentation (a mirrored copy is then a copy); needs --verify.")
@click.option("--batch-size", type=click.IntRange(min=2), default=DEFAULT_BATCH_SIZE,
              show_default=True, help="Training mini-batch.")
@device_option
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Training sample, initialization and corruption seed.")
@max_pixels_option
@max_bytes_option
@workers_option
@engine_options
@overwrite_option
@progress_option
@click.pass_context
@user_errors
def dedup(ctx, src, out, model, train_samples, epochs, min_steps, noise, dropout, radius, verify,
          mirrors, batch_size, device, seed, max_pixels, max_bytes, workers, engine, ray_address,
          overwrite, progress):
    """Find near duplicates with the paper's semantic hash: 32x32 center crops, a
    3072-128-3072 de-noising autoencoder, codes binarized at the ReLU threshold; nearby codes
    propose candidate pairs (linear time), whole-frame thumbnails confirm them. Writes
    OUT/duplicates.txt for `pipeline shards --exclude`."""
    from pipeline.dedup import dedup as run_dedup

    given = {name: value for name, value in (
        ("train_samples", train_samples), ("epochs", epochs), ("min_steps", min_steps),
        ("noise", noise), ("dropout", dropout), ("batch_size", batch_size))
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    summary = run_dedup(list(src), out, model=model, **given, radius=radius,
                        verify=verify, mirrors=mirrors, device=device, workers=workers,
                        engine=engine, ray_address=ray_address,
                        max_pixels=max_pixels, max_bytes=max_bytes, seed=seed,
                        overwrite=overwrite, progress=progress)
    click.echo(summary["line"])

@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--copies", type=click.IntRange(min=1), default=12, show_default=True,
              help="Variants generated per base photograph.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--overwrite", is_flag=True,
              help="Rebuild a corpus that OUT holds with other --copies or --seed (one with "
                   "the same settings is reused).")
@user_errors
def demo(out, copies, seed, overwrite):
    """Build the embedded demo corpus in OUT: OUT/scraped (a folder of "scraped" photos with
    awkward files mixed in) and OUT/lsun/demo_train_lmdb (an LSUN-format LMDB, WebP values)
    from real photographs that ship with scikit-image and matplotlib."""
    from pipeline.demo import build_demo

    info = build_demo(out, copies=copies, seed=seed, overwrite=overwrite)
    click.echo(f"demo corpus{' (already built)' if info['reused'] else ''}: {info['scraped']} "
               f"files in {info['scraped_dir']}, {info['lmdb']} images in {info['lmdb_dir']}")


if __name__ == "__main__":
    run(main, "pipeline")
