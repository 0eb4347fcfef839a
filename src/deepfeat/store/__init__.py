"""The on-disk feature store: layout, writer, reader, export."""
