"""Second-stage ranking: a fusion model over text and collaborative signals, trained on retrieval candidates."""
