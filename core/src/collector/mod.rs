//! The collector runtime's policies, pure: when a batch of events goes out, and how the
//! collection interval stretches under the broker's backpressure and comes back.
