"""The HTTP front end and the job contract it shares with the workers (job records, storage, queue).

Nothing in this package imports torch: the API process starts and serves without it.
"""
