"""No models: errands keeps its own tables (created by ``errands migrate``, or by
Django's ``migrate`` through this app's post_migrate handler). The module exists
because Django sends post_migrate only to apps that have one."""
