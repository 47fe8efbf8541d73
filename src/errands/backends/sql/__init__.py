"""The SQL layer both databases share: named queries in ``.sql`` files, numbered
migrations, the rows errands cannot load, and every operation written once over a
dialect's sessions and codecs (``backend.py``)."""
