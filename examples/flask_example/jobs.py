"""The example's job: counts the words of a text in the background."""

from collections import Counter

from errands import Job, register_job


@register_job
class CountWords(Job):
    def __init__(self, text: str) -> None:
        self.text = text

    def run(self) -> dict[str, object]:
        words = self.text.lower().split()
        return {"words": len(words), "most_common": Counter(words).most_common(1)[0][0]}
