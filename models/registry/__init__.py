"""The specialist registry (SPEC.md section 2): one folder that holds what ``registry ...``, ``prune --register``
and ``serve`` share. Layout of a registry root, and the module that owns each part::

    <root>/entries/<name>.json   one SpecialistEntry per file, the registry proper       (store, entries)
    <root>/.lock                 fcntl lock taken by writers                              (store)
    <root>/views/<plan-hash>/    plan-only specialists: views of the base's files         (store.register_plan)
    <root>/cache/<plan-hash>/    specialists materialised from base + plan, shared by the entries of a plan
                                                                                          (materialise)
    <root>/hub/<name>/           specialists pulled from the hub                          (hub)

``errors`` holds the exceptions of them all.
"""
