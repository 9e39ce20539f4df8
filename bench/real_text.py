"""Real English sentences for the suite's generator check: docstrings of the installed
langchain_core and langchain_community packages, split into sentences, deduplicated, in a fixed
order. Prints a JSON list of at most N (argv[1]) sentences of 6 to 60 words.
"""

import ast
import json
import re
import sys
from pathlib import Path

import langchain_community
import langchain_core


def main() -> None:
    limit = int(sys.argv[1])
    seen, out = set(), []
    roots = [Path(langchain_core.__file__).parent, Path(langchain_community.__file__).parent]
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node) or ""
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = sentence.split()
                if 6 <= len(words) <= 60 and sentence not in seen and not re.search(r"[{}<>=`_/\\|]", sentence):
                    seen.add(sentence)
                    out.append(sentence)
                    if len(out) >= limit:
                        print(json.dumps(out))
                        return
    print(json.dumps(out))


if __name__ == "__main__":
    main()
