"""LangChain integration for tvs, the multi-tenant vector store."""

from langchain_tvs.vectorstores import TvsError, TvsVectorStore

__all__ = ["TvsError", "TvsVectorStore"]
