// Deletes the queues and topics a tidings test left on ActiveMQ 5, over OpenWire.
//
// STOMP cannot delete a destination and the Debian broker runs without JMX or a web console,
// so the stomp driver's tests call this with the ActiveMQ client jars Debian ships:
//
//   java -cp <activemq-client.jar:...> AmqPurge.java tcp://127.0.0.1:61616 ns1 ns2 ...
//   java -cp ... AmqPurge.java tcp://127.0.0.1:61616 --prefix tc-
//
// A destination belongs to namespace `ns` when one of its dot-separated words is `ns` or
// starts with `ns~` (a group word, see drivers/stomp/src/dialect/activemq.rs); with --prefix,
// when a word starts with the prefix. Destinations that still have consumers are left alone
// (the broker refuses to delete them).
import java.util.*;
import org.apache.activemq.ActiveMQConnection;
import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.advisory.DestinationSource;
import org.apache.activemq.command.ActiveMQDestination;

public class AmqPurge {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        boolean prefix = args.length > 1 && args[1].equals("--prefix");
        List<String> names = Arrays.asList(args).subList(prefix ? 2 : 1, args.length);
        ActiveMQConnection connection =
            (ActiveMQConnection) new ActiveMQConnectionFactory(url).createConnection();
        connection.start();
        try {
            DestinationSource source = connection.getDestinationSource();
            // The advisories that list existing destinations arrive asynchronously.
            Thread.sleep(500);
            List<ActiveMQDestination> doomed = new ArrayList<>();
            for (ActiveMQDestination d : source.getQueues()) {
                if (belongs(d.getPhysicalName(), names, prefix)) doomed.add(d);
            }
            for (ActiveMQDestination d : source.getTopics()) {
                if (belongs(d.getPhysicalName(), names, prefix)) doomed.add(d);
            }
            int deleted = 0;
            for (int round = 0; round < 3 && !doomed.isEmpty(); round++) {
                if (round > 0) Thread.sleep(1000); // consumers of just-closed connections
                for (Iterator<ActiveMQDestination> it = doomed.iterator(); it.hasNext();) {
                    ActiveMQDestination d = it.next();
                    try {
                        connection.destroyDestination(d);
                        it.remove();
                        deleted++;
                    } catch (Exception e) {
                        if (round == 2) System.err.println("kept " + d + ": " + e.getMessage());
                    }
                }
            }
            System.out.println("deleted " + deleted + " destinations, kept " + doomed.size());
        } finally {
            connection.close();
        }
    }

    static boolean belongs(String name, List<String> names, boolean prefix) {
        for (String word : name.split("\\.")) {
            for (String n : names) {
                if (prefix ? word.startsWith(n) : (word.equals(n) || word.startsWith(n + "~"))) {
                    return true;
                }
            }
        }
        return false;
    }
}
