"""Data stage: read, detect, validate, render with the chat template."""
from .load import Dataset, load, split
from .records import Conversation, Message

__all__ = ["Conversation", "Dataset", "Message", "load", "split"]
