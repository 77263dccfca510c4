"""A small offline synonym list for augmentation (common English words only).

Written for strop; extend freely. Keys are lower-case single words.
"""
SYNONYMS: dict[str, list[str]] = {
    "big": ["large", "huge", "sizable"], "small": ["little", "tiny", "compact"], "fast": ["quick", "rapid", "speedy"],
    "quick": ["fast", "rapid", "swift"], "slow": ["unhurried", "gradual"], "good": ["fine", "great", "decent"],
    "bad": ["poor", "awful", "terrible"], "happy": ["glad", "cheerful", "pleased"], "sad": ["unhappy", "gloomy"],
    "easy": ["simple", "straightforward"], "hard": ["difficult", "tough"], "important": ["key", "essential", "crucial"],
    "explain": ["describe", "clarify"], "describe": ["explain", "outline"], "show": ["display", "demonstrate"],
    "tell": ["inform", "let me know"], "help": ["assist", "aid"], "make": ["create", "build"], "create": ["make", "produce"],
    "use": ["employ", "utilize"], "find": ["locate", "discover"], "give": ["provide", "offer"], "get": ["obtain", "receive"],
    "start": ["begin", "commence"], "begin": ["start", "commence"], "end": ["finish", "conclude"],
    "finish": ["complete", "end"], "buy": ["purchase", "acquire"], "answer": ["reply", "response"],
    "question": ["query", "inquiry"], "problem": ["issue", "difficulty"], "idea": ["notion", "concept"],
    "way": ["method", "approach"], "list": ["enumerate", "name"], "write": ["compose", "draft"],
    "short": ["brief", "concise"], "long": ["lengthy", "extended"], "new": ["fresh", "novel"], "old": ["aged", "former"],
    "smart": ["clever", "bright"], "simple": ["plain", "basic"], "friend": ["companion", "pal"],
    "job": ["task", "work"], "change": ["alter", "modify"], "improve": ["enhance", "better"], "think": ["believe", "reckon"],
    "say": ["state", "mention"], "many": ["numerous", "several"], "often": ["frequently", "regularly"],
    "maybe": ["perhaps", "possibly"], "very": ["really", "extremely"], "please": ["kindly"],
    "example": ["instance", "sample"], "main": ["primary", "chief"], "common": ["usual", "frequent"],
}
