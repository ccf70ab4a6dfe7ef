"""Sentences written for the loss tests: anchors, their paraphrases, and contradictions."""

SENTENCES = [
    "A man is playing a guitar.",
    "A woman slices an onion in the kitchen.",
    "The cat sleeps on the warm mat.",
    "Stocks fell sharply on Monday after the announcement.",
    "Two dogs run across a snowy field.",
    "He cooked pasta for dinner.",
    "The train was late again this morning.",
    "Children are swimming in a lake.",
]
PARAPHRASES = [
    "Someone plays the guitar.",
    "A woman is cutting an onion.",
    "A cat is asleep on a mat.",
    "Share prices dropped on Monday.",
    "Dogs are running through snow.",
    "He made spaghetti for supper.",
    "Once more the train arrived late.",
    "Kids swim in a lake.",
]
CONTRADICTIONS = [
    "Nobody is playing any instrument.",
    "A man is eating a sandwich.",
    "The cat is chasing a mouse outside.",
    "Stocks rose to record highs.",
    "The dogs are sleeping indoors.",
    "He skipped dinner entirely.",
    "The train arrived early.",
    "The children are reading at school.",
]

# Inputs that stress tokenizing and batching: CJK, accents, outer spaces, one past any max_length, empty.
ODD_SENTENCES = [
    "A man is playing a guitar.",
    "The Berlin Wall fell on 9 November 1989, and crowds crossed the border all night long.",
    "北京大学",
    "ok",
    "  leading and trailing spaces are kept  ",
    "Pandas eat bamboo.",
    "word " * 200,  # longer than max_length: truncated
    "Ünïcödé façade, naïve café.",
    "",
]
