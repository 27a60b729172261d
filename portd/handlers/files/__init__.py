"""The parts of the file-receive handler: safe final names, the held directory, and the
durable writer that runs in worker threads."""
