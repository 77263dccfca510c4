"""Data stage: read, detect, validate, check, clean, split, augment, render."""
from .load import ANY_KIND, SFT_ONLY, DataError, Dataset, load, split
from .records import Conversation, Message, PreferencePair, Problem

__all__ = ["ANY_KIND", "SFT_ONLY", "Conversation", "DataError", "Dataset", "Message", "PreferencePair", "Problem",
           "load", "split"]
