"""Sample corpora built at run time from text already on the machine: the docstrings of the Python
standard library, written out in BERT pre-training format (one sentence per line, a blank line between
documents). Used by the demo, the benchmarks and the tests; nothing here is shipped text.

Docstrings are read with ``ast`` from the source files, never by importing the modules.
"""

from __future__ import annotations

import ast
import gzip
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

__all__ = ["iter_docstring_documents", "package_documents", "write_sample_corpus"]

# A sentence ends at . ! or ? followed by whitespace and an upper-case letter or a quote; good enough for
# prose docstrings, and it never splits "e.g. foo" or "os.path.join".
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"[A-Za-z]")
# Docstrings can hold escaped control characters (a literal "\\x00" in the source); a corpus must not.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _python_sources(include_site_packages: bool) -> list[Path]:
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    if include_site_packages:
        roots.append(Path(sysconfig.get_paths()["purelib"]))
    skip = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
    sources: list[Path] = []
    for root in roots:
        sources.extend(
            p
            for p in root.rglob("*.py")
            if not skip.intersection(p.relative_to(root).parts)
            and (include_site_packages or "site-packages" not in p.relative_to(root).parts)
        )
    return sorted(set(sources))


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _sentences(paragraph: str) -> list[str]:
    text = " ".join(paragraph.split())
    out = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        # Keep prose: at least three words and some letters; drop code samples and tables.
        if (
            len(sentence.split()) >= 3
            and _WORD.search(sentence)
            and not sentence.startswith(">>>")
            and not _CONTROL.search(sentence)
        ):
            out.append(sentence)
    return out


def iter_docstring_documents(
    min_sentences: int = 2, *, max_sentences: int = 40, include_site_packages: bool = False
) -> Iterator[list[str]]:
    """Documents (lists of sentences) from the docstrings of the standard library (and, optionally, of
    the installed packages). The docstrings of one source file form a document, cut every
    ``max_sentences`` sentences, so documents are long and on one topic, like articles."""
    for path in _python_sources(include_site_packages):
        yield from _file_documents(path, min_sentences, max_sentences)


def _file_documents(path: Path, min_sentences: int, max_sentences: int) -> Iterator[list[str]]:
    """The docstring sentences of one source file, cut every ``max_sentences`` sentences."""
    sentences: list[str] = []
    for doc in _docstrings(path):
        for paragraph in re.split(r"\n\s*\n", doc):
            sentences.extend(_sentences(paragraph))
    for start in range(0, len(sentences), max_sentences):
        document = sentences[start : start + max_sentences]
        if len(document) >= min_sentences:
            yield document


def package_documents(
    package: str, min_sentences: int = 2, *, max_sentences: int = 40
) -> list[tuple[str, list[str]]]:
    """``(source file relative to the package, sentences)`` for each docstring document of an installed
    package (read with ``ast``, never imported), in file order. Empty when the package is not installed.
    Used by ``bench/adaptation.py`` to build a domain corpus and a labelled task (which package a text
    comes from)."""
    root = Path(sysconfig.get_paths()["purelib"]) / package
    skip = {"test", "tests", "__pycache__"}
    found: list[tuple[str, list[str]]] = []
    for path in sorted(root.rglob("*.py")) if root.is_dir() else []:
        relative = path.relative_to(root)
        if skip.intersection(relative.parts):
            continue
        found.extend((str(relative), doc) for doc in _file_documents(path, min_sentences, max_sentences))
    return found


def write_sample_corpus(
    path: str | Path,
    *,
    min_bytes: int = 0,
    max_documents: int | None = None,
    include_site_packages: bool = False,
    seed: int = 0,
) -> Path:
    """Write a BERT-format corpus of standard-library docstrings to ``path`` (``.gz`` compresses).

    With ``min_bytes`` larger than the docstrings themselves, the documents are written again in a
    different order until the file is that large (for throughput benchmarks).
    """
    path = Path(path)
    documents = list(iter_docstring_documents(include_site_packages=include_site_packages))
    if max_documents is not None:
        documents = documents[:max_documents]
    if not documents:
        raise RuntimeError("no standard-library docstrings found to build a sample corpus from")
    rng = random.Random(seed)
    opener = gzip.open if path.suffix == ".gz" else open
    written = 0
    with opener(path, "wt", encoding="utf-8", newline="\n") as out:
        first = True
        while first or written < min_bytes:
            for sentences in documents:
                block = "\n".join(sentences) + "\n\n"
                out.write(block)
                written += len(block.encode("utf-8"))
                if not first and written >= min_bytes:
                    break
            first = False
            rng.shuffle(documents)
    return path
