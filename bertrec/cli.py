"""The `bertrec` command: serve, ingest, recommend, stats, and the training, evaluation and admin commands."""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_TARGET = "127.0.0.1:50051"


def _serve(args: argparse.Namespace) -> int:
    from bertrec.config import load_config
    from bertrec.server.app import serve

    config = load_config(
        args.config,
        overrides={
            "server": {"host": args.host, "port": args.port, "metrics_port": args.metrics_port},
            "store": {"data_dir": args.data_dir, "url": args.store_url, "load_demo": False if args.no_demo else None},
            "model": {"path": args.model, "device": args.device, "quantize": args.quantize, "runtime": args.runtime},
            "workers": {"replicas": args.replicas, "ray_address": args.ray_address, "pool_name": args.pool_name},
            "index": {"factory": args.index, "shards": args.index_shards},
            "auth": {"token": args.token},
            "rerank": {"path": args.reranker},
        },
    )
    asyncio.run(serve(config, ready_file=args.ready_file))
    return 0


def _client(args: argparse.Namespace):
    from bertrec.client import Client

    return Client(args.target, token=args.token, timeout_s=args.timeout)


def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            yield from csv.DictReader(fh)


def _items_from(path: Path) -> Iterator[dict[str, Any]]:
    """Generic rows (id, text, metadata) or MovieLens movies.csv (movieId, title, genres)."""
    if path.name == "movies.csv":
        from bertrec.movielens import read_movies

        for item in read_movies(path.parent):
            yield {"id": item.id, "text": item.text, "metadata": item.metadata}
        return
    for row in _read_records(path):
        metadata = row.get("metadata") or {}
        if isinstance(metadata, str):
            metadata = json.loads(metadata) if metadata.strip() else {}
        yield {"id": int(row["id"]), "text": row["text"], "metadata": metadata}


def _interactions_from(path: Path) -> Iterator[dict[str, Any]]:
    """Generic rows (user_id, item_id, timestamp, weight) or MovieLens ratings.csv."""
    if path.name == "ratings.csv":
        from bertrec.movielens import read_ratings

        for x in read_ratings(path.parent):
            yield {"user_id": x.user_id, "item_id": x.item_id, "timestamp": x.timestamp, "weight": x.weight}
        return
    for row in _read_records(path):
        yield {
            "user_id": str(row["user_id"]),
            "item_id": int(row["item_id"]),
            "timestamp": float(row.get("timestamp") or 0.0),
            "weight": float(row.get("weight") or 1.0),
        }


def _ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with _client(args) as client:
        if args.items:
            items = list(_items_from(Path(args.items)))
            summary = None
            with tqdm(total=len(items), desc="items", unit="item") as bar:
                for start in range(0, len(items), args.batch_size * 8):
                    part = items[start : start + args.batch_size * 8]
                    result = client.upsert_items(part, batch_size=args.batch_size)
                    summary = result if summary is None else summary + result
                    bar.update(len(part))
            print(f"items: {summary}")
        if args.interactions:
            rows = list(_interactions_from(Path(args.interactions)))
            with tqdm(total=len(rows), desc="interactions", unit="row") as bar:
                for start in range(0, len(rows), 5000):
                    client.record_interactions(rows[start : start + 5000])
                    bar.update(len(rows[start : start + 5000]))
            print(f"interactions: {len(rows)} recorded")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    filters = dict(f.split("=", 1) for f in args.filter or [])
    with _client(args) as client:
        results = list(
            client.recommend(
                args.user,
                history=args.history,
                text=args.text,
                k=args.k,
                filters=filters,
                diversity=args.diversity,
                include_items=True,
            )
        )
        because_ids = sorted({r.because_item_id for r in results if r.because_item_id})
        because = {i.id: i for i in client.get_items(because_ids)} if because_ids else {}
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "rank": r.rank,
                        "item_id": r.item_id,
                        "score": round(r.score, 5),
                        "text": r.item.text if r.item else "",
                        "metadata": r.item.metadata if r.item else {},
                        "because_item_id": r.because_item_id,
                        "because_text": because[r.because_item_id].text if r.because_item_id in because else "",
                    }
                    for r in results
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    print(f"{'rank':>4}  {'score':>6}  {'item':>8}  {'title':<48}  because you liked")
    for r in results:
        text = (r.item.text if r.item else "")[:48]
        reason = because[r.because_item_id].text[:40] if r.because_item_id in because else ""
        print(f"{r.rank:>4}  {r.score:6.3f}  {r.item_id:>8}  {text:<48}  {reason}")
    return 0


def _load_model(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with _client(args) as client, tqdm(desc="swap", unit="item") as bar:
        for stage, done, total, message in client.load_model(args.path, force=args.force):
            bar.set_description(stage)
            bar.total = total
            bar.n = done
            bar.refresh()
            if message:
                bar.write(message)
    return 0


def _stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.info()
    if args.json:
        print(json.dumps(dataclasses.asdict(info), indent=2))
        return 0
    print(f"model {info.model} (dim {info.dim}), bertrec {info.version}")
    print(f"index {info.index_type} on {info.index_device}: {info.index_size} vectors")
    print(f"catalogue {info.item_count} items, {info.user_count} users, {info.interaction_count} interactions")
    print(f"user cache hit rate {info.user_cache_hit_rate:.1%}, store version {info.store_version}")
    for r in info.replicas:
        state = "healthy" if r.healthy else "DOWN"
        print(
            f"  replica {r.name} on {r.device}/{r.runtime or '?'} ({state}): {r.encoded_texts} texts, "
            f"mean batch {r.mean_batch_size:.1f}, "
            f"mean queue {r.mean_queue_s * 1000:.1f} ms; batching: max {r.max_batch_size} texts, "
            f"wait {r.max_wait_s * 1000:g} ms, {r.max_batch_tokens} tokens per model call"
        )
    return 0


def _configure_batching(args: argparse.Namespace) -> int:
    wait_s = None if args.max_wait_ms is None else args.max_wait_ms / 1000.0
    with _client(args) as client:
        replicas = client.configure_batching(
            max_batch_size=args.max_batch_size, max_wait_s=wait_s, max_batch_tokens=args.max_batch_tokens
        )
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in replicas], indent=2))
        return 0
    for r in replicas:
        state = "" if r.healthy else " (DOWN: takes the settings when it restarts)"
        print(
            f"replica {r.name}{state}: max batch {r.max_batch_size} texts, max wait {r.max_wait_s * 1000:g} ms, "
            f"max {r.max_batch_tokens} padded tokens per model call"
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from bertrec.evaluation.experiment import ALL_METHODS, checkpoint_split, run_evaluation

    dataset = _load_dataset(args)
    splits = ["warm", "cold", "low-resource"] if args.split == "all" else [args.split]
    methods = list(ALL_METHODS) if not args.methods else args.methods.split(",")
    seeds: int | list[int] = args.seeds
    trained_on = checkpoint_split(args.model or "")
    if trained_on:
        # A fine-tuned encoder saw one split's training data; any other split's test items may
        # be among what it learned from, so only that split and draw are fair to evaluate.
        if splits != [trained_on[0]]:
            print(
                f"error: {args.model} was trained on the {trained_on[0]} split (seed {trained_on[1]}); "
                f"evaluate it with --split {trained_on[0]}",
                file=sys.stderr,
            )
            return 2
        seeds = [trained_on[1]]
    run_evaluation(dataset, splits, methods, seeds, Path(args.out), model_path=args.model or "")
    print((Path(args.out) / "evaluation.md").read_text())
    return 0


def _load_dataset(args: argparse.Namespace):
    from bertrec.evaluation.data import load_generic, load_movielens
    from bertrec.movielens import bundled_path

    if args.items:
        return load_generic(
            args.items,
            args.interactions,
            template=args.template or "{text}",
            positive_threshold=args.positive_threshold,
        )
    return load_movielens(args.movielens or bundled_path(), template=args.template or "title")


def _train(args: argparse.Namespace) -> int:
    from bertrec.evaluation.splits import SPLITS, validation_split
    from bertrec.training.trainer import ContrastiveTrainer, TrainConfig
    from bertrec.training.validation import make_validator

    if args.keep_best and (args.workers > 1 or args.no_validate):
        raise SystemExit("--keep-best needs validation on one worker (not --workers > 1 or --no-validate)")
    dataset = _load_dataset(args)
    split = SPLITS[args.split](dataset, seed=args.split_seed)
    config = TrainConfig(
        init_from=args.resume or args.init_from or "",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        freeze_layers=args.freeze_layers,
        max_length=args.max_length,
        max_steps=args.max_steps,
        logq_correction=not args.no_logq,
        hard_negatives=args.hard_negatives,
        hard_negative_pool=args.hard_negative_pool,
        hard_negative_refresh=args.hard_negative_refresh,
        seed=args.seed,
        split=args.split,
        split_seed=args.split_seed,
        device=args.device,
        user_tower=args.user_tower,
        history_items=args.history_items,
        user_max_length=args.user_max_length,
        tower_lr=args.tower_lr,
    )
    if args.workers > 1:
        from bertrec.training.distributed import train_distributed

        if args.ray_address:
            import ray

            ray.init(address=args.ray_address)
        metrics = train_distributed(
            config, dataset, split.train, args.out, num_workers=args.workers, use_gpu=args.use_gpu
        )
        print(json.dumps(metrics, indent=2))
        print(f"checkpoint: {args.out}")
        return 0
    # Validation positives are held out of training, so the stored validation figure (which the
    # hot-swap gate compares) measures what the model did not see.
    validation = None if args.no_validate else validation_split(split)
    trainer = ContrastiveTrainer(config, dataset, validation.train if validation else split.train, args.out)
    if args.resume:
        trainer.resume(Path(args.resume))
    validate = make_validator(trainer, dataset, validation) if validation else None
    summary = trainer.train(
        validate, validate_every=args.validate_every, checkpoint_every=args.checkpoint_every, keep_best=args.keep_best
    )
    print(json.dumps(summary, indent=2))
    print(f"checkpoint: {args.out}")
    return 0


def _train_reranker(args: argparse.Namespace) -> int:
    from bertrec.evaluation.experiment import encode_catalogue
    from bertrec.evaluation.pipeline import train_for_serving
    from bertrec.fingerprint import model_fingerprint
    from bertrec.rerank.training import RerankTraining
    from bertrec.workers.encoder import default_model_path

    dataset = _load_dataset(args)
    model = args.model or default_model_path()
    vectors = encode_catalogue(dataset, model, Path(args.out) / "cache")
    config = RerankTraining(seed=args.seed, **({"members": args.members} if args.members else {}))
    cross_encoder = None
    if args.kind == "cross-encoder":
        from bertrec.rerank.cross_encoder import CrossEncoderTraining

        cross_encoder = CrossEncoderTraining(
            steps=args.steps,
            freeze_layers=args.freeze_layers,
            max_length=args.max_length,
            top_n=args.top_n,
            device=args.device,
            seed=args.seed,
        )
    fingerprint = model_fingerprint(model)
    card = train_for_serving(dataset, vectors, args.out, fingerprint, config, args.seed, cross_encoder)
    summary = {k: v for k, v in card["summary"].items() if k not in ("members", "losses")}
    print(json.dumps(summary, indent=2))
    print(f"re-ranker: {args.out}  (serve it with: bertrec serve --reranker {args.out})")
    return 0


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _interpolate(args: argparse.Namespace) -> int:
    from bertrec.training.interpolate import interpolate_checkpoints

    out = interpolate_checkpoints(args.start, args.tuned, args.alpha, args.out)
    print(f"checkpoint: {out}  (start + {args.alpha} x (tuned - start))")
    return 0


def _cross_domain(args: argparse.Namespace) -> int:
    from bertrec.evaluation.cross_domain import CrossDomainConfig, run_cross_domain

    config = CrossDomainConfig(
        target_genres=tuple(args.target_genres.split(",")),
        fractions=tuple(float(f) for f in args.fractions.split(",")),
        source_steps=args.source_steps,
        target_steps=args.target_steps,
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        source_interpolation=args.source_interpolation,
    )
    run_cross_domain(_load_dataset(args), Path(args.out), config)
    print((Path(args.out) / "cross_domain.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bertrec.config import QUANTIZE_MODES, RUNTIMES

    parser = argparse.ArgumentParser(prog="bertrec", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC service (no flags: local demo on the bundled catalogue)")
    serve.add_argument("--config", help="TOML file (sections as in bertrec.config)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (0 = a free one)")
    serve.add_argument("--data-dir")
    serve.add_argument("--store-url", help="postgresql://... store shared by front ends on several hosts")
    serve.add_argument("--model", help="local Hugging Face checkpoint folder (default: packaged MiniLM)")
    serve.add_argument("--device", help="auto, cpu, cuda")
    serve.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        help="CPU replicas: int8 (calibrated) or bf16 (native-bf16 CPUs); GPU: fp16",
    )
    serve.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="CPU replicas: auto (fp32 on onnx, bf16 and int8 on openvino), torch, onnx, openvino",
    )
    serve.add_argument("--replicas", type=int, help="encoder replicas (default: one per GPU, else per core)")
    serve.add_argument("--ray-address", help="join an existing Ray cluster (auto or host:port)")
    serve.add_argument(
        "--pool-name", help="share detached encoder replicas <name>-<i> with other front ends of this name"
    )
    serve.add_argument("--index", help="FAISS factory string (Flat, HNSW32, IVF1024,Flat ...)")
    serve.add_argument("--index-shards", type=int, help="split the index over N IndexShard actors (default 1)")
    serve.add_argument("--token", help="require this bearer token")
    serve.add_argument("--reranker", help="trained re-ranker folder (bertrec train-reranker)")
    serve.add_argument("--no-demo", action="store_true", help="do not load the demo catalogue into an empty store")
    serve.add_argument("--ready-file", help="write the bound port here once SERVING")
    serve.set_defaults(func=_serve)

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", default=DEFAULT_TARGET, help="server HOST:PORT")
        p.add_argument("--token")
        p.add_argument("--timeout", type=float, default=30.0)

    ingest = sub.add_parser("ingest", help="stream items and/or interactions from CSV or JSONL")
    client_flags(ingest)
    ingest.add_argument("--items", help="CSV/JSONL with id,text[,metadata] or MovieLens movies.csv")
    ingest.add_argument("--interactions", help="CSV/JSONL with user_id,item_id[,timestamp,weight] or ratings.csv")
    ingest.add_argument("--batch-size", type=int, default=256)
    ingest.set_defaults(func=_ingest)

    rec = sub.add_parser("recommend", help="print recommendations for a user, history or text")
    client_flags(rec)
    rec.add_argument("--user")
    rec.add_argument("--history", type=int, nargs="*")
    rec.add_argument("--text")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--filter", action="append", help="metadata equality, KEY=VALUE (repeatable)")
    rec.add_argument("--diversity", type=float, default=0.0)
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(func=_recommend)

    def data_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--movielens", help="MovieLens folder (default: the bundled MovieLens-small)")
        p.add_argument("--items", help="generic items file (CSV, JSONL or Parquet): id, text[, metadata]")
        p.add_argument("--interactions", help="generic interactions file: user_id, item_id[, timestamp, weight]")
        p.add_argument("--positive-threshold", type=float, default=1.0, help="generic data: weight >= this is liked")
        p.add_argument("--template", help="item text: title | title_genres | title_genres_tags | a format string")

    tr = sub.add_parser("train", help="fine-tune the encoder on a split's training interactions")
    data_flags(tr)
    tr.add_argument("--out", required=True, help="checkpoint folder (Hugging Face format + model card)")
    tr.add_argument("--split", default="warm", choices=["warm", "cold", "low-resource"])
    tr.add_argument("--split-seed", type=int, default=0)
    tr.add_argument("--init-from", help="start from this checkpoint (default: packaged MiniLM)")
    tr.add_argument("--resume", help="continue an interrupted run from its checkpoint folder")
    tr.add_argument("--epochs", type=float, default=1.0)
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--lr", type=float, default=3e-5)
    tr.add_argument("--temperature", type=float, default=0.05)
    tr.add_argument("--freeze-layers", type=int, default=0)
    tr.add_argument("--max-length", type=int, default=32)
    tr.add_argument("--max-steps", type=int, default=0)
    tr.add_argument("--no-logq", action="store_true", help="disable the popularity (logQ) correction")
    tr.add_argument("--hard-negatives", type=int, default=0, help="mined negatives per anchor (0 = in-batch only)")
    tr.add_argument("--hard-negative-pool", type=int, default=50, help="mine among this many nearest items")
    tr.add_argument("--hard-negative-refresh", type=int, default=0, help="re-mine every N steps (0 = once)")
    tr.add_argument(
        "--user-tower",
        choices=["items", "pooled", "history-text"],
        default="items",
        help="items: co-liked item pairs, users pooled as served today; pooled: history pooling plus a learned"
        " layer; history-text: the encoder over the history's titles",
    )
    tr.add_argument("--history-items", type=int, default=10, help="pooled, history-text: latest liked items per user")
    tr.add_argument("--user-max-length", type=int, default=128, help="history-text: tokens of the history text")
    tr.add_argument("--tower-lr", type=float, default=1e-3, help="pooled: learning rate of the learned layer")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--validate-every", type=int, default=0, help="steps between validations (0 = at the end)")
    tr.add_argument("--checkpoint-every", type=int, default=0)
    tr.add_argument(
        "--keep-best",
        action="store_true",
        help="save the weights that validated best (the starting ones included), not the last step's",
    )
    tr.add_argument("--no-validate", action="store_true")
    tr.add_argument("--workers", type=int, default=1, help="data-parallel Ray Train workers (TorchTrainer)")
    tr.add_argument("--use-gpu", action="store_true", help="one GPU per Ray Train worker")
    tr.add_argument("--ray-address", help="Ray cluster for --workers (default: a local Ray)")
    tr.set_defaults(func=_train)

    rr = sub.add_parser("train-reranker", help="train the re-ranker (fusion, or cross-encoder) `serve --reranker` uses")
    data_flags(rr)
    rr.add_argument("--out", required=True, help="re-ranker folder")
    rr.add_argument("--model", help="the encoder the service runs (default: packaged MiniLM)")
    rr.add_argument("--members", type=int, help="independently seeded MLPs averaged (default 6)")
    rr.add_argument(
        "--kind", choices=["fusion", "cross-encoder"], default="fusion", help="cross-encoder: fusion, then BERT pairs"
    )
    rr.add_argument("--steps", type=int, default=200, help="cross-encoder training steps")
    rr.add_argument("--freeze-layers", type=int, default=4, help="cross-encoder: lower layers kept as pretrained")
    rr.add_argument("--max-length", type=int, default=128, help="cross-encoder: tokens per (history, item) pair")
    rr.add_argument("--top-n", type=int, default=50, help="cross-encoder: re-scores the fusion model's top-N")
    rr.add_argument("--device", default="auto", help="cross-encoder training device")
    rr.add_argument("--seed", type=int, default=0)
    rr.set_defaults(func=_train_reranker)

    ev = sub.add_parser("evaluate", help="offline metrics of every method on deterministic splits")
    data_flags(ev)
    ev.add_argument("--split", default="all", choices=["all", "warm", "cold", "low-resource"])
    ev.add_argument("--methods", help="comma-separated subset of the methods (default: all)")
    ev.add_argument("--seeds", type=int, default=5, help="random draws for the cold and low-resource splits")
    ev.add_argument("--model", help="encoder checkpoint for the text methods (default: packaged MiniLM)")
    ev.add_argument("--out", default="evaluation-results")
    ev.set_defaults(func=_evaluate)

    cd = sub.add_parser("cross-domain", help="source-domain fine-tuning vs pretrained on a genre-split target")
    data_flags(cd)
    cd.add_argument("--out", default="evaluation-results/cross-domain")
    cd.add_argument("--target-genres", default="Animation,Children,Fantasy")
    cd.add_argument("--fractions", default="0.05,0.2,1.0", help="shares of the target training data")
    cd.add_argument("--source-steps", type=int, default=900, help="source fine-tuning steps (at most 2 passes)")
    cd.add_argument("--target-steps", type=int, default=100)
    cd.add_argument("--seeds", default="0", help="comma-separated: one target sample and fine-tuning per seed")
    cd.add_argument(
        "--source-interpolation",
        type=_share,
        default=0.5,
        help="source encoder = pretrained + this share of the source tuning (WiSE-FT; 1 = tuned as is)",
    )
    cd.set_defaults(func=_cross_domain)

    ip = sub.add_parser("interpolate", help="weights between a start and a checkpoint fine-tuned from it (WiSE-FT)")
    ip.add_argument("tuned", help="fine-tuned checkpoint folder")
    ip.add_argument("--start", default="", help="the checkpoint it was tuned from (default: packaged MiniLM)")
    ip.add_argument("--alpha", type=_share, default=0.5, help="share of the fine-tuning kept: 0 = start, 1 = tuned")
    ip.add_argument("--out", required=True, help="checkpoint folder to write")
    ip.set_defaults(func=_interpolate)

    swap = sub.add_parser("load-model", help="hot-swap the served encoder for a checkpoint")
    client_flags(swap)
    swap.add_argument("path", help="checkpoint folder, relative to the server's checkpoints folder")
    swap.add_argument("--force", action="store_true", help="swap even if its stored evaluation is worse")
    swap.set_defaults(func=_load_model)

    batching = sub.add_parser(
        "configure-batching", help="change the encoder replicas' dynamic batching now (unset flags keep their value)"
    )
    client_flags(batching)
    batching.add_argument("--max-batch-size", type=int, help="texts per batch (1 = every text its own model call)")
    batching.add_argument("--max-wait-ms", type=float, help="how long a non-empty batch waits for company")
    batching.add_argument("--max-batch-tokens", type=int, help="padded tokens (rows x longest text) per model call")
    batching.add_argument("--json", action="store_true")
    batching.set_defaults(func=_configure_batching)

    stats = sub.add_parser("stats", help="model, replicas, index and catalogue sizes")
    client_flags(stats)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_stats)
    return parser


def _json_access_log() -> None:
    """The server's per-RPC lines are JSON objects already: print them bare, one per line."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("bertrec.access")
    access.addHandler(handler)
    access.propagate = False


def main(argv: list[str] | None = None) -> int:
    import os

    # gRPC core's INFO lines (fork handlers while Ray starts processes) are noise for operators.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _json_access_log()
    from bertrec.errors import BertrecError

    try:
        return args.func(args)
    except BertrecError as exc:
        print(f"error ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
