#!/bin/sh
# The Kafka broker of the fapiao-kafka image: one KRaft node, formatted on first start.
#   KAFKA_HOST, KAFKA_PORT (9092)        the client listener, advertised as is
#   KAFKA_LISTEN_HOST (KAFKA_HOST)       the address the listeners bind (0.0.0.0 in a pod)
#   KAFKA_CONTROLLER_PORT (9093)         the controller listener
#   KAFKA_NODE_ID, KAFKA_VOTERS          this node (default: the ordinal ending the host name, kafka-2 -> 2,
#                                        else 1) and the controller quorum ("0@host:9093,..."; itself alone)
#   KAFKA_CLUSTER_ID                     the same for every node of a cluster (22 characters)
#   KAFKA_REPLICATION (1)                internal topics' replicas (3 in a cluster; min ISR min(2, it))
#   KAFKA_HEAP (512m)
# The settings are those of the local stack's broker (deploy/local/fapiao_stack/kafka.py).
set -eu
host="${KAFKA_HOST:-$(hostname -f)}"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
listen="${KAFKA_LISTEN_HOST:-$host}"
ordinal="${HOSTNAME:-$(hostname)}"
ordinal="${ordinal##*-}"
case "$ordinal" in '' | *[!0-9]*) ordinal=1 ;; esac
node="${KAFKA_NODE_ID:-$ordinal}"
voters="${KAFKA_VOTERS:-$node@$host:$controller_port}"
replicas="${KAFKA_REPLICATION:-1}"
min_isr=$((replicas < 2 ? replicas : 2))
heap="${KAFKA_HEAP:-512m}"
data="${KAFKA_DATA_DIR:-/var/lib/kafka}"
: "${KAFKA_CLUSTER_ID:?set KAFKA_CLUSTER_ID (the same 22 characters on every node)}"
mkdir -p "$data/logs"
cat >"$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
listeners=PLAINTEXT://$listen:$port,CONTROLLER://$listen:$controller_port
advertised.listeners=PLAINTEXT://$host:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data/logs
num.partitions=1
auto.create.topics.enable=false
default.replication.factor=$replicas
min.insync.replicas=$min_isr
unclean.leader.election.enable=false
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
log.retention.hours=168
PROPS
java_opts="-Xmx$heap -Xms256m -XX:+UseG1GC -Dlog4j2.configurationFile=/opt/kafka/log4j2.xml"
if [ ! -e "$data/logs/meta.properties" ]; then
	# shellcheck disable=SC2086
	java $java_opts -cp '/opt/kafka/libs/*' kafka.tools.StorageTool format -t "$KAFKA_CLUSTER_ID" \
		-c "$data/server.properties"
fi
# shellcheck disable=SC2086
exec java $java_opts -cp '/opt/kafka/libs/*' kafka.Kafka "$data/server.properties"
