"""The contract between the routes and the rooms that plug into them.

    state.py         what every request handler shares, built once per process by the app factory
    interactions.py  the interactions the server answers, named once (SMART permission, audit record)
    hooks.py         where security and on-demand plug in: the Guard, before-search hooks, and the
                     record of what a response served (audit reads it)
    outcome.py       an error as an OperationOutcome

Routes (app/fhir, app/wado, app/admin) use these and never import security or sync; security
and on-demand register themselves on the hooks in their own init_app.
"""
