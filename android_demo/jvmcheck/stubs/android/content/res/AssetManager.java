package android.content.res;
/** Stub: reads "assets" from the directory in the system property assets.dir (JVM checks only). */
public final class AssetManager {
  private java.io.File file(String name) { return new java.io.File(System.getProperty("assets.dir", "assets"), name); }
  public java.io.InputStream open(String name) throws java.io.IOException { return new java.io.FileInputStream(file(name)); }
  public AssetFileDescriptor openFd(String name) throws java.io.IOException {
    java.io.File f = file(name);
    return new AssetFileDescriptor(new java.io.FileInputStream(f), f.length());
  }
}
