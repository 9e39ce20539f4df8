"""LangChain integration for tvs, the multi-tenant vector store."""

from langchain_tvs.plugins import TvsPlugins
from langchain_tvs.vectorstores import TvsError, TvsVectorStore

__all__ = ["TvsError", "TvsPlugins", "TvsVectorStore"]
