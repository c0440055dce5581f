"""The queuescaler test kit: what tests/, bench/ and hack/demo.py share, imported normally.

- `env`: the local environment (`TestEnv`, `bring_up`, `read_testenv`), `wait_until`, the CRD
- `broker`: `BrokerAdmin`, the one client of RabbitMQ's management API
- `status`: a QueueScaler's status and conditions
- `operator_process`: the real operator as a process (`OperatorProcess`)
- `podrunner`: one real worker process per Running pod of a kwok pool (`PodRunner`)
- `pool`: a scenario's queue, Secret, Deployment and QueueScaler (`Pool`, `Timeline`)
- `publisher`: identified work on a queue, and the workers' processed logs
- `workers`: the pika and Celery workers the pod runner starts
- `envctl`: a separate environment (QS_ENV) stopped and started on purpose (testenv.sh, kwokctl)
- `faultproxy`: a loopback proxy in front of the management API that misbehaves on demand

Nothing is re-exported here: worker processes import this package too, and should not pay
for the Kubernetes client or Celery when they start. Import from the modules.
"""
