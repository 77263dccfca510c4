"""Fine-tuning as a service: the OpenAI fine-tuning jobs API and the web studio.

``strop service`` and ``strop studio`` run the same app (app.py): files and
jobs live in a SQLite store (store.py), uploads are validated by the data
stage (files.py), a worker thread runs each job's training in a child
process (worker.py, runner.py), and the models it makes are served through
the serving stage's app (serving.py).
"""
