"""retr as a retriever in other frameworks: LangChain (``langchain``) and LlamaIndex (``llamaindex``)."""
