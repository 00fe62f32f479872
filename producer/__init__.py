"""The producer: walk documents, chunk them with the model's tokenizer, register and enqueue."""
