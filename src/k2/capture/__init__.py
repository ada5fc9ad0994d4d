"""The capture stage: source → validation → dedup → gap repair → an output."""
