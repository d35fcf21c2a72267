"""Documents from the Hugging Face hub or local files, with the flags every HF-based prepare script shares.

  --dataset ID          a hub dataset (or a local folder in the hub's layout)
  --name CONFIG         its configuration (FineWeb: sample-10BT, sample-100BT, ...)
  --revision REV        a branch, tag, commit or ref (refs/convert/parquet, refs/pr/N)
  --data-files GLOB...  parquet / jsonl / json / txt / csv files instead: local paths or
                        hf://datasets/ID@REV/PATH (then --dataset only names the corpus)
  --column NAME         the text column
  --split NAME          the split to read
  --streaming           read the files as a stream (nothing converted to Arrow on disk first)

Only data files load: `datasets` >= 4 no longer runs loading scripts, so a script-only dataset is
refused with the revisions (or files) that hold its data. meta.json records what was read: the
dataset, config, revision and the commit it resolved to, the file list and the document count.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from prepare.common import PrepareError, check_free_space, sha256_file

# The hub's automatic Parquet conversion names a split it could convert only in part "partial-<split>".
PARTIAL_MARK = re.compile(r"(^|/)partial-[^/]+/")
COMMIT_IN_PATH = re.compile(r"@([0-9a-f]{40})/")
# Where the Parquet files of well-known script-only datasets live (used when the hub cannot be asked).
KNOWN_PARQUET_REVISIONS = {"Skylion007/openwebtext": "refs/pr/22"}
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text", ".csv": "csv",
            ".arrow": "arrow"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")


@dataclass
class HFSpec:
    """What to read; built from the shared flags by spec_from_args."""
    dataset: str | None
    name: str | None = None
    revision: str | None = None
    data_files: list[str] | None = None
    column: str = "text"
    split: str = "train"
    streaming: bool = False
    allow_partial: bool = False
    sample_by: str = "document"  # plain-text files: one document per file ("line": per line)
    builder: str | None = None  # the packaged builder for data_files; None: from their extension


@dataclass
class Corpus:
    """An opened corpus: the documents, what they are, and a temporary Arrow cache to remove."""
    dataset: object  # datasets.Dataset, or IterableDataset when streaming
    spec: HFSpec
    provenance: dict
    num_documents: int | None  # None: a stream of unknown length
    text_bytes: int | None  # the size of the text, when known (the free-space check's estimate)
    scratch: Path | None = field(default=None, repr=False)

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def __enter__(self) -> Corpus:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def add_hf_arguments(parser: argparse.ArgumentParser, *, dataset: str | None, name: str | None = None,
                     streaming: bool = False) -> None:
    g = parser.add_argument_group("Hugging Face source (shared by the HF-based prepare scripts)")
    g.add_argument("--dataset", default=dataset, metavar="ID", help="hub dataset id or local folder "
                   "(default: %(default)s)")
    g.add_argument("--name", default=name, metavar="CONFIG", help="dataset configuration (default: %(default)s)")
    g.add_argument("--revision", metavar="REV", help="branch, tag, commit or ref, e.g. refs/convert/parquet")
    g.add_argument("--data-files", nargs="+", metavar="GLOB", help="parquet/jsonl/json/txt/csv files "
                   "(local paths or hf://datasets/ID@REV/PATH) instead of the dataset's own")
    g.add_argument("--column", default="text", help="the text column (default: %(default)s)")
    g.add_argument("--split", default="train", help="the split to read (default: %(default)s)")
    g.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=streaming,
                   help="stream the files instead of converting them to Arrow first (default: %(default)s)")
    g.add_argument("--allow-partial", action="store_true", help="accept files of a partial Parquet "
                   "conversion (refs/convert/parquet's partial-<split>/ folders)")


def spec_from_args(args: argparse.Namespace, *, default_revision: str | None = None) -> HFSpec:
    if args.data_files and (args.revision or args.name):
        raise PrepareError("--revision and --name select a hub dataset's own files; with --data-files "
                           "put the revision in the path instead (hf://datasets/ID@REV/PATH/*.parquet)")
    revision = args.revision if args.revision or args.data_files else default_revision
    return HFSpec(dataset=args.dataset, name=args.name, revision=revision, data_files=args.data_files,
                  column=args.column, split=args.split, streaming=args.streaming,
                  allow_partial=args.allow_partial)


# ----------------------------------------------------------------------------------------------
# opening

def builder_for(data_files: list[str]) -> str:
    """The `datasets` packaged builder for these files, from their extension."""
    kinds = set()
    for pattern in data_files:
        name = pattern.lower()
        for c in COMPRESSIONS:
            name = name.removesuffix(c)
        kind = next((b for ext, b in BUILDERS.items() if name.endswith(ext)), None)
        if kind is None:
            raise PrepareError(f"--data-files {pattern}: unknown file type; use .parquet, .jsonl, .json, "
                               ".txt or .csv files (optionally compressed)")
        kinds.add(kind)
    if len(kinds) > 1:
        raise PrepareError(f"--data-files mixes file types ({', '.join(sorted(kinds))}): prepare one type at a time")
    return kinds.pop()


def _is_local(path: str) -> bool:
    return "://" not in path


def local_bytes(patterns: list[str]) -> int:
    """The size of the local files these paths and globs match."""
    import glob

    return sum(os.path.getsize(f) for p in patterns for f in glob.glob(p, recursive=True) if os.path.isfile(f))


def open_corpus(spec: HFSpec, *, num_proc: int | None = None, scratch_parent: Path | None = None,
                before_download: Callable[[], object] | None = None) -> Corpus:
    """Resolves the files, refuses a partial conversion, loads (or streams) the text column.
    `before_download` runs once the files are known and checked, before any of them is fetched
    from the network (a prepare loads its tokenizer there: a missing BPE file stops it before a
    50 GB download, while a bad local input is still named first)."""
    scratch = None
    if spec.data_files:
        path, kwargs = spec.builder or builder_for(spec.data_files), {"data_files": spec.data_files}
        if path == "text":
            kwargs["sample_by"] = spec.sample_by
        if not spec.streaming and all(_is_local(p) for p in spec.data_files):
            # local files: a transient Arrow copy beside the output, removed afterwards
            parent = Path(scratch_parent or tempfile.gettempdir())
            parent.mkdir(parents=True, exist_ok=True)
            check_free_space(parent, local_bytes(spec.data_files), "an Arrow copy of --data-files "
                             "(or read them with --streaming: no copy)")
            scratch = Path(tempfile.mkdtemp(prefix=".hf-cache.tmp.", dir=parent))
            kwargs["cache_dir"] = str(scratch)
    elif spec.dataset:
        path, kwargs = spec.dataset, {"name": spec.name, "revision": spec.revision}
    else:
        raise PrepareError("nothing to read: pass --dataset ID or --data-files GLOB ...")
    try:
        builder = _call_datasets(spec, lambda: _load_builder(path, kwargs))
        files = _split_files(builder, spec)
        _check_local_parquet(files)
        if not spec.allow_partial:
            _refuse_partial(spec, files)
        if before_download is not None and not all(_is_local(f) for f in files):
            before_download()
        if spec.streaming and type(builder).__name__ == "Parquet":
            stream = ParquetStream(files, spec.column, spec)
            return Corpus(stream, spec, _provenance(spec, builder, files), stream.num_rows, stream.text_bytes)
        if spec.streaming:
            ds = _call_datasets(spec, lambda: builder.as_streaming_dataset(split=spec.split))
        else:
            _call_datasets(spec, lambda: builder.download_and_prepare(num_proc=num_proc))
            ds = _call_datasets(spec, lambda: builder.as_dataset(split=spec.split))
        ds = _text_column(ds, spec)
        return Corpus(ds, spec, _provenance(spec, builder, files), *_size(ds, builder, spec), scratch=scratch)
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise


def _load_builder(path: str, kwargs: dict):
    import datasets

    if not sys.stderr.isatty():  # progress bars for a person at a terminal, not for logs
        datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors reach the user through ours

    return datasets.load_dataset_builder(path, **{k: v for k, v in kwargs.items() if v is not None})


class ParquetStream:
    """The text column of Parquet files (local or hf://), in order, read one row group at a time:
    memory holds a row group, whatever the size of the files (datasets' stream reads a whole file
    ahead of a slow consumer: gigabytes for FineWeb's 2 GB files). It offers what a prepare uses
    of datasets' IterableDataset: iteration over {column: text} rows, iter(batch_size), and
    state_dict()/load_state_dict() for a position {"file", "row"}, which a resumed prepare jumps
    to directly through the files' row-group metadata."""

    def __init__(self, files: list[str], column: str, spec: HFSpec):
        self.files, self.column, self.spec = files, column, spec
        self.position = {"file": 0, "row": 0}  # of the next row to yield
        metas = [self._open(f).metadata for f in files]
        names = metas[0].schema.to_arrow_schema().names
        if column not in names:
            raise PrepareError(f"{describe_spec(spec)} has no column {column!r}; pick one of {names} with --column")
        self.num_rows = sum(m.num_rows for m in metas)
        index = names.index(column)
        self.text_bytes = sum(m.row_group(g).column(index).total_uncompressed_size
                              for m in metas for g in range(m.num_row_groups))

    @property
    def column_names(self) -> list[str]:
        return [self.column]

    def _open(self, file: str):
        import fsspec
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(fsspec.open(file, "rb").open())
        except Exception as e:
            raise _explain(self.spec, e) from None

    def state_dict(self) -> dict:
        return dict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = {"file": int(state["file"]), "row": int(state["row"])}

    def __iter__(self):
        for batch in self._batches(1024):
            for text in batch:
                self.position["row"] += 1  # before the yield: state_dict() is then the next row's
                yield {self.column: text}

    def iter(self, batch_size: int):
        for batch in self._batches(batch_size):
            self.position["row"] += len(batch)
            yield {self.column: batch}

    def _batches(self, batch_size: int):
        """Lists of texts from the current position on; the position advances as they are used."""
        start = dict(self.position)
        for i in range(start["file"], len(self.files)):
            self.position = {"file": i, "row": start["row"] if i == start["file"] else 0}
            pf = self._open(self.files[i])
            first, skip = 0, self.position["row"]  # the row group holding the position, and rows into it
            while first < pf.metadata.num_row_groups and skip >= pf.metadata.row_group(first).num_rows:
                skip -= pf.metadata.row_group(first).num_rows
                first += 1
            groups = list(range(first, pf.metadata.num_row_groups))
            if not groups:
                continue
            for record in pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=[self.column],
                                          use_threads=False):
                texts = record.column(0).to_pylist()
                if skip:
                    texts, skip = texts[skip:], max(0, skip - len(texts))
                if texts:
                    yield texts
        self.position = {"file": len(self.files), "row": 0}


def _split_files(builder, spec: HFSpec) -> list[str]:
    data_files = builder.config.data_files or {}
    if spec.data_files and not any(data_files.values()):
        raise PrepareError(f"--data-files {' '.join(spec.data_files)} matched no file: check the paths and globs")
    if spec.split not in data_files:
        have = ", ".join(data_files) or "none"
        raise PrepareError(f"{describe_spec(spec)} has no split {spec.split!r} (it has: {have}): choose one with --split")
    files = [str(f) for f in data_files[spec.split]]
    if not files:
        raise PrepareError(f"no files for split {spec.split!r} of {describe_spec(spec)}: check the paths and globs")
    return files


def _check_local_parquet(files: list[str]) -> None:
    """An empty or unreadable local Parquet file, named before `datasets` fails on it obscurely."""
    import pyarrow.parquet as pq

    for f in files:
        if _is_local(f) and f.endswith(".parquet"):
            try:
                rows = pq.ParquetFile(f).metadata.num_rows
            except Exception as e:
                raise PrepareError(f"{f} is not a readable Parquet file ({type(e).__name__}: {e}): download "
                                   "it again, or leave it out of --data-files") from None
            if rows == 0:
                raise PrepareError(f"{f} holds no rows (an empty shard): download it again, or leave it out "
                                   "of --data-files")


def _refuse_partial(spec: HFSpec, files: list[str]) -> None:
    partial = [f for f in files if PARTIAL_MARK.search(f.split("@", 1)[-1])]
    if partial:
        raise PrepareError(
            f"{describe_spec(spec)} resolves to a partial Parquet conversion ({len(partial)} of {len(files)} files "
            f"under partial-{spec.split}/, e.g. {partial[0]}): the hub converted only part of this split, "
            "so the corpus would be silently smaller. Use a revision with the full data (e.g. the dataset's "
            "Parquet branch or PR), or pass --allow-partial to accept a partial corpus knowingly")


def _text_column(ds, spec: HFSpec):
    columns = ds.column_names
    if columns is None:  # a stream whose schema is unknown until read
        rows = iter(ds)
        columns = list(next(rows).keys())
        del rows  # closes the reader now, with what it buffered
    if spec.column not in columns:
        raise PrepareError(f"{describe_spec(spec)} has no column {spec.column!r}; pick one of {columns} with --column")
    ds = ds.select_columns([spec.column])
    if spec.data_files and (spec.builder or builder_for(spec.data_files)) == "text" and spec.sample_by == "line":
        ds = ds.filter(lambda batch: [bool(t.strip()) for t in batch[spec.column]], batched=True)
    return ds


def _size(ds, builder, spec: HFSpec) -> tuple[int | None, int | None]:
    """(number of documents, bytes of text) where known without reading the stream."""
    if not spec.streaming:
        try:
            text_bytes = ds.data.column(spec.column).nbytes
        except Exception:
            text_bytes = None
        return len(ds), text_bytes
    info = (builder.info.splits or {}).get(spec.split) if builder.info else None
    return (info.num_examples or None, info.num_bytes or None) if info else (None, None)


def _provenance(spec: HFSpec, builder, files: list[str]) -> dict:
    commits = sorted({m.group(1) for f in files for m in [COMMIT_IN_PATH.search(f)] if m})
    local = [f for f in files if _is_local(f)]
    out = {"kind": "file" if files and len(local) == len(files) else "hf", "dataset": spec.dataset, "config": None if spec.data_files else spec.name or builder.config.name,
           "revision": spec.revision, "commit": commits[0] if len(commits) == 1 else (commits or None),
           "data_files": spec.data_files, "files": files, "split": spec.split, "column": spec.column,
           "streaming": spec.streaming}
    if local:
        out["sha256"] = {f: sha256_file(f) for f in local}
    return out


def describe_spec(spec: HFSpec) -> str:
    if spec.data_files:
        return f"--data-files {' '.join(spec.data_files)}"
    rev = f" at revision {spec.revision}" if spec.revision else ""
    cfg = f" (config {spec.name})" if spec.name else ""
    return f"dataset {spec.dataset!r}{cfg}{rev}"


# ----------------------------------------------------------------------------------------------
# errors: what `datasets` raises, turned into what to do

def _call_datasets(spec: HFSpec, fn):
    try:
        return fn()
    except PrepareError:
        raise
    except Exception as e:  # datasets and huggingface_hub raise many types: sorted by message below
        raise _explain(spec, e) from None


def _explain(spec: HFSpec, e: Exception) -> PrepareError:
    while e.__cause__ is not None and type(e).__name__ == "DatasetGenerationError":
        e = e.__cause__  # "An error occurred while generating the dataset": the cause says which
    text, kind = str(e), type(e).__name__
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return PrepareError(f"{e.strerror} while `datasets` downloaded or converted {describe_spec(spec)} "
                            f"({e.filename or 'its cache'}): free disk space, move the cache (HF_HOME), "
                            "or read the files as a stream with --streaming (no Arrow copy)")
    script = re.search(r"Dataset scripts are no longer supported, but found (\S+)", text)
    if script:
        return PrepareError(script_only_message(spec, script.group(1)))
    config = re.search(r"BuilderConfig '([^']*)' not found\. Available: (\[.*\])", text)
    if config:
        return PrepareError(f"{describe_spec(spec)}: there is no config {config.group(1)!r}; choose --name from "
                            f"{config.group(2)}")
    if "Revision" in kind or "Invalid rev id" in text or "revision" in text.lower() and "not found" in text.lower():
        return PrepareError(f"{describe_spec(spec)}: revision {spec.revision!r} does not exist ({kind}): pass a branch, "
                            "tag, commit or ref that the dataset has (see its 'Files and versions' page)")
    if spec.data_files and ("data_files" in text or "Unable to find" in text or kind == "EmptyDatasetError"):
        return PrepareError(f"--data-files {' '.join(spec.data_files)} matched no file ({text.splitlines()[0]}): "
                            "check the paths and globs")
    if kind in ("DatasetNotFoundError", "RepositoryNotFoundError", "FileNotFoundError", "HfHubHTTPError",
                "ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"):
        return PrepareError(
            f"could not find {describe_spec(spec)} ({kind}: {text.splitlines()[0] if text else ''}). Check the id "
            f"(https://huggingface.co/datasets/{spec.dataset}), and that this machine is online "
            "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE unset); on a machine without internet, copy the data "
            "files here and pass them with --data-files")
    if kind == "ValueError" and "split" in text.lower():
        return PrepareError(f"{describe_spec(spec)}: {text.splitlines()[0]}: choose another --split")
    return PrepareError(f"could not load {describe_spec(spec)}: {kind}: {text.splitlines()[0] if text else ''}")


def script_only_message(spec: HFSpec, script: str) -> str:
    rev = spec.revision or "main"
    head = (f"{spec.dataset!r} at revision {rev} holds only a loading script ({script}), which the installed "
            "`datasets` (>= 4) no longer runs. Load its data files instead:")
    options = []
    for ref, n_files, partial in parquet_revisions(spec.dataset):
        if partial:
            options.append(f"--revision {ref} ({n_files} Parquet files, a partial conversion: add --allow-partial "
                           "to accept a smaller corpus)")
        else:
            options.append(f"--revision {ref} ({n_files} Parquet files)")
    if not options and spec.dataset in KNOWN_PARQUET_REVISIONS:
        options.append(f"--revision {KNOWN_PARQUET_REVISIONS[spec.dataset]} (its Parquet conversion)")
    if not options:
        options.append("--revision refs/convert/parquet (the hub's automatic Parquet conversion, if it has "
                       "one; a partial one also needs --allow-partial)")
    options.append(f"--data-files hf://datasets/{spec.dataset}@REV/PATH/*.parquet, or local parquet/jsonl/txt "
                   "files")
    return head + " " + "; or ".join(options)


def parquet_revisions(repo_id: str | None, limit: int = 12) -> list[tuple[str, int, bool]]:
    """(ref, number of Parquet files, partial?) for the refs of a hub dataset that hold Parquet
    files: its conversion branch and pull requests. Empty when the hub cannot be asked."""
    if not repo_id or Path(repo_id).exists():
        return []
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        refs = api.list_repo_refs(repo_id, repo_type="dataset", include_pull_requests=True)
        candidates = [r.ref for r in refs.converts] + [r.ref for r in (refs.pull_requests or [])]
        found = []
        for ref in candidates[:limit]:
            files = [f for f in api.list_repo_files(repo_id, repo_type="dataset", revision=ref)
                     if f.endswith(".parquet")]
            if files:
                found.append((ref, len(files), any(PARTIAL_MARK.search(f) for f in files)))
        return found
    except Exception:  # offline, rate-limited, gated: the message falls back to general advice
        return []


# ----------------------------------------------------------------------------------------------
# reading

def iter_texts(corpus: Corpus, batch_size: int = 1024, start: int = 0) -> Iterator[list[str]]:
    """The documents as lists of up to batch_size texts, from document `start` on."""
    ds, column = corpus.dataset, corpus.spec.column
    if start:
        ds = ds.skip(start)
    for batch in ds.iter(batch_size=batch_size):
        yield [t for t in batch[column] if t is not None]
