"""A small multi-user RAG app on tvs, the way the old app used `create_vector_store`.

Each signed-in user has a knowledge base of their own: `store_for(user_id)` creates it on first
use and returns a LangChain vector store that can reach that user's documents and no one
else's. The app keeps two secrets, nothing per user: the admin key and one signing secret.

    tvs serve                                   # TVS_ADMIN_KEY=... in its environment
    pip install ./clients/python
    TVS_URL=http://127.0.0.1:8080 TVS_ADMIN_KEY=... python examples/multi_user_rag/app.py

Without `TVS_SIGNING_SECRET` the app creates a signing key and prints its secret once: keep it
in the app's configuration. Texts are embedded by tvs with each tenant's model (MiniLM by
default). The last step, sending the prompt to a chat model, is left to the app's LLM.
"""

from __future__ import annotations

import os
import sys

from langchain_core.prompts import ChatPromptTemplate

from langchain_tvs import TvsAdmin, TvsVectorStore, create_vector_store

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer from the user's own notes only. Notes:\n{context}"),
        ("human", "{question}"),
    ]
)

_stores: dict[str, TvsVectorStore] = {}


def signing_secret() -> str:
    secret = os.environ.get("TVS_SIGNING_SECRET")
    if not secret:
        secret = TvsAdmin().create_signing_key()["secret"]
        os.environ["TVS_SIGNING_SECRET"] = secret
        print(f"created a signing key; keep TVS_SIGNING_SECRET={secret}", file=sys.stderr)
    return secret


def store_for(user_id: str) -> TvsVectorStore:
    """The signed-in user's store (one per user per process; the tenant is created once)."""
    if user_id not in _stores:
        _stores[user_id] = create_vector_store(user_id, signing_secret=signing_secret())
    return _stores[user_id]


def remember(user_id: str, notes: list[str]) -> list[str]:
    return store_for(user_id).add_texts(notes)


def ask(user_id: str, question: str, k: int = 2) -> tuple[str, list[str]]:
    """The prompt for the app's chat model and the notes it was built from."""
    notes = store_for(user_id).as_retriever(search_kwargs={"k": k}).invoke(question)
    context = "\n".join(f"- {n.page_content}" for n in notes)
    prompt = PROMPT.invoke({"context": context, "question": question}).to_string()
    return prompt, [n.page_content for n in notes]


def main() -> dict[str, list[str]]:
    remember("ana@example.com", ["My dentist appointment is on Tuesday at 9.", "Ana's bike is blue."])
    remember("ben@example.com", ["Ben's flight to Lisbon leaves on Friday.", "Ben parks on level 3."])
    answers = {}
    for user in ["ana@example.com", "ben@example.com"]:
        prompt, notes = ask(user, "When is my appointment or trip?")
        print(f"== {user}\n{prompt}\n")
        answers[user] = notes
    return answers


if __name__ == "__main__":
    main()
