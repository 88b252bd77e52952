"""Download the public F2LLM-v2 data from the Hugging Face hub (`scripts/f2llm_v2_data.py
download`, or `data.corpus.download: true`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from f2llm.data.sources.f2llm_v2.layout import (
    CORPUS_SUFFIX,
    DOWNLOAD_COMMAND,
    QUERY_SUFFIX,
    SHARED_CORPUS_FILE,
)

REPO_ID = "codefuse-ai/F2LLM-v2"


def download_f2llm_v2(root: str | Path, datasets: Sequence[str] | None = None,
                      repo_id: str = REPO_ID, layout: str = "raw", revision: str | None = None
                      ) -> Path:
    """`huggingface_hub.snapshot_download` of the public data (or the files of `datasets`)
    into `root`: resumable, with a progress bar. Offline it fails at once naming the command
    to run where there is a network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = None
    if datasets:
        suffixes = [".parquet"] if layout == "raw" else [QUERY_SUFFIX, CORPUS_SUFFIX]
        # At the top or in any folder of the repository (fnmatch: `*` crosses `/`).
        files = [f"{name}{s}" for name in datasets for s in suffixes]
        if layout == "tokenized":
            files.append(SHARED_CORPUS_FILE)
        patterns = [p for f in files for p in (f, f"*/{f}")]
    from f2llm.model.hub import hub_offline, hub_reachable

    hint = (f"no network here (HF_HUB_OFFLINE is set or the hub is unreachable): download "
            f"{repo_id} where there is one, `{DOWNLOAD_COMMAND}`, then copy the folder here "
            f"and train with data.corpus.root=<folder>")
    # Checked first: without a network the hub client would retry for minutes.
    if hub_offline() or not hub_reachable():
        raise ConnectionError(hint)
    try:
        path = snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision,
                                 allow_patterns=patterns, local_dir=str(root))
    except (LocalEntryNotFoundError, OSError) as e:
        raise ConnectionError(f"{hint} ({type(e).__name__}: {e})") from None
    return Path(path)
