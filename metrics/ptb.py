"""The tokenization the COCO caption evaluation applies, without Java.

pycocoevalcap runs Stanford's PTBTokenizer (`-preserveLines -lowerCase`) and then drops punctuation
tokens. This follows the same rules for what captions contain: lower case; split off punctuation,
clitics ("does n't", "dog 's") and currency/percent signs; keep numbers ("1,000", "3:30"), hyphenated
words and abbreviations ("u.s.", "mr."); brackets become -lrb- / -rrb- and, as in pycocoevalcap (whose
filter is upper case), are kept. tests/test_metrics.py checks it against the Java tokenizer.
"""

import re

DROPPED = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"}  # pycocoevalcap's PUNCTUATIONS
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "mt.", "ft.", "vs.", "etc.", "inc.", "co.",
                 "ltd.", "corp.", "univ.", "jan.", "feb.", "aug.", "sept.", "oct.", "nov.", "dec.", "ave.", "prof.",
                 "gen."}
SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na", "'tis": "'t is"}


KEEP_FRONT = re.compile(r"^'(s|re|ve|ll|d|m|n't|em)$|^#\w|^[.-]\d")  # clitics, hashtags, ".5", "-3"


def split_token(token):
    """Split one whitespace-separated piece into PTB tokens: punctuation off both ends, then a clitic."""
    front, back = [], []
    while token and token[0] in "\"'`$#,;:!?([{)]}.-" and not KEEP_FRONT.match(token):
        front.append(BRACKETS.get(token[0], token[0]))
        token = token[1:]
    while token:
        if token.endswith("...") or token.endswith("--"):
            cut = 3 if token.endswith("...") else 2
            back.insert(0, token[-cut:])
            token = token[:-cut]
        elif token[-1] in BRACKETS:
            back.insert(0, BRACKETS[token[-1]])
            token = token[:-1]
        elif token[-1] in "\"`,;:!?%'" or (token[-1] == "-" and len(token) > 1):
            back.insert(0, token[-1])
            token = token[:-1]
        elif token[-1] == "." and not (re.fullmatch(r"([a-z]\.)+", token) or token in ABBREVIATIONS):
            back.insert(0, ".")  # a sentence's full stop, not an abbreviation's
            token = token[:-1]
        else:
            break
    if token in SPLIT_WORDS:
        middle = SPLIT_WORDS[token].split()
    else:
        clitic = re.fullmatch(r"(.*[^'])(n't|'s|'re|'ve|'ll|'d|'m)", token)
        middle = [clitic.group(1), clitic.group(2)] if clitic else [token] if token else []
    return front + middle + back


ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'", "&nbsp;": " "}  # what Java reads as text
AMPERSAND, SEMICOLON, HASH = "\x00", "\x01", "\x02"  # stand-ins that keep AT&T, &#39; and caf&eacute; whole


def unescape(text):
    """HTML entities as Stanford's tokenizer reads them: the six above become their characters; a numeric one
    (&#39;) stays, as a token of its own; any other named one (&eacute;) stays inside its word. Capital letters
    joined by & (AT&T, Q&A, Texas A&M) stay one token, the letters after them split off (AT&Tx: at&t x)."""
    for entity, char in ENTITIES.items():
        text = text.replace(entity, char)
    text = re.sub(r"&#(\d+);", lambda m: f" {AMPERSAND}{HASH}{m.group(1)}{SEMICOLON} ", text)
    text = re.sub(r"&([A-Za-z]+);", lambda m: f"{AMPERSAND}{m.group(1)}{SEMICOLON}", text)
    return re.sub(r"([A-Z]+)&([A-Z]+)([a-z]?)", lambda m: f"{m.group(1)}{AMPERSAND}{m.group(2)}"
                  + (f" {m.group(3)}" if m.group(3) else ""), text)


def ptb_tokenize(caption):
    """A caption as the COCO evaluation sees it: lower-case PTB tokens without punctuation, joined by spaces."""
    text = unescape(caption).lower().replace("\xa0", " ").replace("\n", " ")
    text = re.sub(r"#(?=\d)", "# ", text)  # "#15" -> "# 15"
    text = re.sub(r"--+", " -- ", text)
    text = re.sub(r"\.\.\.+", " ... ", text)
    text = re.sub(r"([()\[\]{}\";!?&<>])", r" \1 ", text)  # always their own token
    text = re.sub(r",(?!\d)|(?<!\d),", " , ", text)  # commas, except inside numbers like 1,000
    text = re.sub(r":(?!\d)|(?<!\d):", " : ", text)  # colons, except inside times like 3:30
    tokens = []
    for piece in text.split():
        tokens += split_token(piece)
    tokens = [BRACKETS.get(t, t) for t in tokens]
    tokens = ["``" if t == '"' else t for t in tokens]
    return " ".join(t for t in tokens if t not in DROPPED).replace(AMPERSAND, "&").replace(SEMICOLON, ";").replace(HASH, "#")
