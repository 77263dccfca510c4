"""Active learning: score an unlabelled pool, pick what to label next, merge labels back.

score.py   model uncertainty signals + input embeddings for every pool item
select.py  ONE table of selection strategies (uncertainty, diversity, hybrid, random)
merge.py   validate a labelled selection and append it to a training file
loop.py    oracle experiments: select -> reveal -> retrain -> eval, learning curves
"""
