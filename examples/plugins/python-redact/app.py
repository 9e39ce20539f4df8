"""An ingest-transform plugin in Python: redacts e-mail addresses and phone numbers from the
texts of every ingest of the tenant that enables it.

Build (componentize-py 0.25.1 from PyPI):
    componentize-py -d ../../../wit/plugin -w tvs:plugin/ingest-transform componentize --stub-wasi app -o redact.wasm
"""

import re

from wit_world import exports
from wit_world.imports import log

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Seven or more digits, possibly grouped by spaces, dots, dashes or parentheses, with a "+".
PHONE = re.compile(r"(?<!\w)\+?\d(?:[\s().-]{0,2}\d){6,}(?!\w)")


class Transform(exports.Transform):
    def transform(self, documents):
        redacted = 0
        for document in documents:
            if document.text is None:
                continue
            text = PHONE.sub("[phone]", EMAIL.sub("[email]", document.text))
            if text != document.text:
                redacted += 1
                document.text = text
        log.write(log.Level.INFO, f"redacted {redacted} of {len(documents)} documents")
        return documents
