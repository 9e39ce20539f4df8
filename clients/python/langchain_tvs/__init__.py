"""LangChain integration for tvs, the multi-tenant vector store."""

from langchain_tvs.admin import (
    AsyncTvsAdmin,
    TokenAuth,
    TvsAdmin,
    acreate_vector_store,
    create_vector_store,
    mint_token,
    tenant_id_for,
)
from langchain_tvs.plugins import TvsPlugins
from langchain_tvs.vectorstores import TvsError, TvsVectorStore

__all__ = [
    "AsyncTvsAdmin",
    "TokenAuth",
    "TvsAdmin",
    "TvsError",
    "TvsPlugins",
    "TvsVectorStore",
    "acreate_vector_store",
    "create_vector_store",
    "mint_token",
    "tenant_id_for",
]
